"""Fuzz harness: bytes into the one framer (`earmark.iscsi.stream.Framer`).

An input picks MaxRecvDataSegmentLength, header and data digests, and a stream: either
raw bytes, or records (a drawn BHS and AHS with their lengths set, a data segment, the
padding and digests the framer expects, now and then a corrupted digest) so the fuzzer
gets past the CRCs to the decoders. The stream is parsed twice: in one read with no
hooks, and in the drawn chunking, with Data-Out segments placed in a drawn number of
views, small Data-In handed over by ``on_answer``, and ``admit`` refusing (then
resumed) where drawn.

A crash is any exception out of the framer (its documented failures reach
``on_error`` as ProtocolError and its kin), the two runs delivering different PDUs or
errors (the chunking, placement and pauses must change nothing), a receive buffer with
no room while the framer is not paused (the reader would spin), and a hang.
"""

from __future__ import annotations

import itertools
from typing import Any

from earmark.iscsi.errors import DigestError, ProtocolError
from earmark.iscsi.framing import frame
from earmark.iscsi.opcodes import Opcode
from earmark.iscsi.pdu import BHS_LENGTH, Pdu, decode_pdu
from earmark.iscsi.stream import Framer, detached, receive_buffer_bytes
from tests.fuzz.draw import Draw

_DEST = 1 << 18
_DATA_OUT = int(Opcode.DATA_OUT)


def _records(draw: Draw, mrdsl: int, hd: bool, dd: bool) -> bytes:
    out: list[bytes] = []
    for _ in range(1 + draw.below(8)):
        bhs = bytearray(draw.take(BHS_LENGTH).ljust(BHS_LENGTH, b"\0"))
        words = draw.below(4) if draw.flag() else 0
        ahs = draw.take(4 * words).ljust(4 * words, b"\0")
        data = draw.blob(mrdsl + 8)
        bhs[4] = words
        if not draw.flag():  # else keep the drawn DataSegmentLength, right or wrong
            bhs[5:8] = len(data).to_bytes(3, "big")
        wire = b"".join(bytes(p) for p in frame(bytes(bhs) + ahs, data, hd, dd))
        if draw.flag() and (hd or (dd and data)):  # corrupt one digest byte
            at = len(wire) - 1 if dd and data and (not hd or draw.flag()) else BHS_LENGTH + len(ahs)
            wire = wire[:at] + bytes([wire[at] ^ 0x5A]) + wire[at + 1 :]
        out.append(wire)
    return b"".join(out)


def _error(header: memoryview, exc: ProtocolError) -> tuple[Any, ...]:
    assert isinstance(exc, ProtocolError), exc
    return ("error", type(exc).__name__, exc.reason, exc.reject,
            isinstance(exc, DigestError) and exc.header, bytes(header))


class _Run:
    """One parse of the stream, recording what the framer hands over."""

    def __init__(self, mrdsl: int, hd: bool, dd: bool) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.dest = memoryview(bytearray(_DEST))
        buffer = memoryview(bytearray(receive_buffer_bytes(mrdsl, 1)))
        self.framer = Framer(buffer, self._pdu, self._error, max_data_segment=mrdsl)
        self.framer.set_full_feature(mrdsl, hd, dd)
        self.refusals: list[bool] = []

    def _pdu(self, pdu: Pdu, placed: bool) -> None:
        self.events.append(("pdu", detached(pdu)))

    def _error(self, header: memoryview, exc: ProtocolError) -> None:
        self.events.append(_error(header, exc))

    def _answer(self, buf: memoryview, at: int, data: memoryview) -> None:
        header = buf[at : at + BHS_LENGTH]
        try:
            self.events.append(("pdu", detached(decode_pdu(header, b"", data))))
        except ProtocolError as exc:
            self.events.append(_error(header, exc))

    def _admit(self, bhs: memoryview) -> bool:
        return not (self.refusals and self.refusals.pop())

    def place(self, pieces: int) -> None:
        def placement(bhs: memoryview) -> list[memoryview] | None:
            if bhs[0] & 0x3F != _DATA_OUT:
                return None
            dsl = int.from_bytes(bhs[5:8], "big")
            at = int.from_bytes(bhs[40:44], "big") % (_DEST - dsl)
            cuts = [at + dsl * i // pieces for i in range(pieces + 1)]
            return [self.dest[a:b] for a, b in itertools.pairwise(cuts)]

        self.framer.placement = placement

    def hooks(self, data_in: bool, refusals: list[bool]) -> None:
        if data_in:
            self.framer.on_answer = self._answer
        if refusals:
            self.refusals = refusals[::-1]
            self.framer.admit = self._admit

    def receive(self, stream: bytes, chunks: list[int]) -> list[tuple[Any, ...]]:
        framer, pos, i = self.framer, 0, 0
        while framer.error is None:
            if framer.paused:
                framer.resume()
                framer.received(0)
                continue
            if pos == len(stream):
                break
            dest = framer.get_buffer(-1)
            assert len(dest), "no room to receive into, and the framer is not paused"
            n = min(len(dest), chunks[i % len(chunks)], len(stream) - pos)
            dest[:n] = stream[pos : pos + n]
            pos += n
            i += 1
            framer.received(n)
        return self.events


def one_input(data: bytes) -> None:
    draw = Draw(data)
    mrdsl = draw.pick((512, 4096, 8192))
    hd, dd = draw.flag(), draw.flag()
    chunks = [1 + draw.uint(2) % 9000 for _ in range(1 + draw.below(4))]
    pieces = draw.below(4)
    data_in = draw.flag()
    refusals = [draw.flag() for _ in range(draw.below(4))]
    stream = _records(draw, mrdsl, hd, dd) if draw.flag() else draw.rest()
    whole = _Run(mrdsl, hd, dd).receive(stream, [len(stream) or 1])
    run = _Run(mrdsl, hd, dd)
    if pieces:
        run.place(pieces)
    run.hooks(data_in, refusals)
    assert run.receive(stream, chunks) == whole
