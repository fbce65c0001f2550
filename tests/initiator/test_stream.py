"""The initiator's BufferedProtocol reader fed by hand: placement, digests, any chunking."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest

from earmark.initiator.stream import PLACE_MIN
from earmark.iscsi.framing import serialize
from earmark.iscsi.pdu import (
    BHS_LENGTH,
    DataIn,
    NopIn,
    Pdu,
    ScsiResponse,
    decode_pdu,
    encode_header,
)
from earmark.runtime.initiator_connection import InitiatorStream


class Sink:
    def __init__(self, dest: memoryview) -> None:
        self.dest = dest
        self.pdus: list[tuple[Pdu, bool, bytes]] = []
        self.batches = 0
        self.answers = 0

    def placement(self, bhs: memoryview) -> memoryview | None:
        offset = int.from_bytes(bhs[40:44], "big")
        length = int.from_bytes(bhs[5:8], "big")
        return self.dest[offset : offset + length]

    def pdu_received(self, pdu: Pdu, placed: bool) -> None:
        if isinstance(pdu, DataIn) and not placed:  # what the session does
            self.dest[pdu.buffer_offset : pdu.buffer_offset + len(pdu.data)] = pdu.data
        self.pdus.append((pdu, placed, bytes(getattr(pdu, "data", b""))))

    def answer_received(self, header: memoryview, at: int, data: memoryview) -> None:
        self.answers += 1
        self.pdu_received(decode_pdu(header[at : at + BHS_LENGTH], b"", data), False)

    def batch_done(self) -> None:
        self.batches += 1


class Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


def feed(stream: InitiatorStream, wire: bytes, rng: random.Random) -> None:
    pos = 0
    while pos < len(wire):
        buf = stream.get_buffer(-1)
        n = min(len(buf), rng.choice([1, 7, 48, 1000, 20000, 1 << 20]), len(wire) - pos)
        buf[:n] = wire[pos : pos + n]
        stream.buffer_updated(n)
        pos += n


def make(sink: Sink, digests: bool) -> tuple[InitiatorStream, Transport]:
    stream = InitiatorStream(memoryview(bytearray(1 << 20)), lambda s, r: None)
    transport = Transport()
    stream.connection_made(transport)  # type: ignore[arg-type]
    stream.set_full_feature(262144, digests, digests)
    stream.sink = sink
    return stream, transport


@pytest.mark.parametrize("digests", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_any_chunking_gives_the_same_pdus(digests: bool, seed: int) -> None:
    rng = random.Random(seed)
    big = os.urandom(3 * PLACE_MIN + 5)  # odd length: padding after a placed segment
    small = os.urandom(1001)
    pdus: list[Any] = [
        NopIn(itt=0xFFFFFFFF, ttt=3, stat_sn=1, exp_cmd_sn=2, max_cmd_sn=9, data=b"hi"),
        DataIn(itt=1, buffer_offset=100, data=big, data_sn=0),
        DataIn(itt=1, buffer_offset=200000, data=small, final=True, status_present=True),
        ScsiResponse(itt=2, status=0, stat_sn=7, exp_cmd_sn=3, max_cmd_sn=10),
    ]
    wire = b"".join(bytes(p) for pdu in pdus for p in serialize(pdu, digests, digests))

    async def main() -> Sink:
        sink = Sink(memoryview(bytearray(300000)))
        stream, transport = make(sink, digests)
        feed(stream, wire, rng)
        assert not transport.aborted and stream.failed is None
        return sink

    sink = asyncio.run(main())
    got = [(type(p).__name__, data) for p, _, data in sink.pdus]
    assert got == [("NopIn", b"hi"), ("DataIn", big), ("DataIn", small), ("ScsiResponse", b"")]
    assert bytes(sink.dest[100 : 100 + len(big)]) == big
    placed = [placed for _, placed, _ in sink.pdus]
    assert placed[2] is False and placed[0] is False  # small PDUs come through the buffer
    # The small Data-In and the SCSI Response (and the large Data-In, when it was all
    # in before it was parsed) came as header and data, with no PDU object built.
    assert sink.answers == 3 - placed[1]
    assert sink.batches >= 1


def test_data_digest_mismatch_on_a_placed_segment_drops_the_connection() -> None:
    big = os.urandom(4 * PLACE_MIN)
    pieces = serialize(DataIn(itt=1, data=big), True, True)
    wire = bytearray(b"".join(bytes(p) for p in pieces))
    wire[-1] ^= 0xFF  # the data digest

    async def main() -> tuple[InitiatorStream, Transport, Sink]:
        sink = Sink(memoryview(bytearray(len(big))))
        stream, transport = make(sink, True)
        # Header first, then the segment in pieces: it is placed, then its digest checked.
        feed(stream, bytes(wire[:52]), random.Random(0))
        feed(stream, bytes(wire[52:]), random.Random(1))
        return stream, transport, sink

    stream, transport, sink = asyncio.run(main())
    assert transport.aborted and stream.failed is not None and "digest" in stream.failed
    assert sink.pdus == []


def test_oversized_segment_is_refused() -> None:
    async def main() -> InitiatorStream:
        sink = Sink(memoryview(bytearray(16)))
        stream, transport = make(sink, False)
        header = encode_header(NopIn(data=bytes(300000)))
        feed(stream, header, random.Random(0))
        assert transport.aborted
        return stream

    stream = asyncio.run(main())
    assert stream.failed is not None and "MaxRecvDataSegmentLength" in stream.failed


def test_a_large_segment_still_arriving_is_received_in_place() -> None:
    big = os.urandom(2 * PLACE_MIN)
    wire = b"".join(bytes(p) for p in serialize(DataIn(itt=1, buffer_offset=8, data=big),
                                                 False, False))

    async def main() -> tuple[Sink, list[int]]:
        sink = Sink(memoryview(bytearray(len(big) + 8)))
        stream, _ = make(sink, False)
        buf = stream.get_buffer(-1)
        buf[:148] = wire[:148]  # the header and 100 bytes of data
        stream.buffer_updated(148)
        targets = []
        dest = stream.get_buffer(-1)  # now the caller's buffer, not the receive buffer
        targets.append(len(dest))
        dest[: len(wire) - 148] = wire[148:]
        stream.buffer_updated(len(wire) - 148)
        return sink, targets

    sink, targets = asyncio.run(main())
    assert targets == [len(big) - 100]
    ((_, placed, _),) = sink.pdus
    assert placed and bytes(sink.dest[8:]) == big


def test_nothing_is_delivered_after_a_protocol_error() -> None:
    pdus = [NopIn(itt=1, data=b"one"), NopIn(itt=2, data=b"two"), NopIn(itt=3)]
    wire = bytearray(b"".join(bytes(p) for pdu in pdus for p in serialize(pdu, True, True)))
    wire[52 + 4 + 4 + 52] ^= 0xFF  # the second one's data

    async def main() -> tuple[InitiatorStream, Transport, Sink]:
        sink = Sink(memoryview(bytearray(16)))
        stream, transport = make(sink, True)
        feed(stream, bytes(wire), random.Random(0))
        return stream, transport, sink

    stream, transport, sink = asyncio.run(main())
    assert transport.aborted and stream.failed is not None and "digest" in stream.failed
    assert [getattr(p, "itt", None) for p, _, _ in sink.pdus] == [1]
