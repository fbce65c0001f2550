"""The one framer, sans-I/O: reassembly in any chunks, limits, digests, placement, flow."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from earmark.iscsi import pdu as P
from earmark.iscsi.digest import crc32c
from earmark.iscsi.errors import DigestError, ProtocolError
from earmark.iscsi.framing import serialize
from earmark.iscsi.opcodes import RejectReason
from earmark.iscsi.stream import Framer, detached, receive_buffer_bytes
from tests.iscsi.test_pdu import ANY_PDU

Event = tuple[str, Any]


def wire(pdus: Sequence[Any], hd: bool = False, dd: bool = False) -> bytes:
    return b"".join(bytes(piece) for p in pdus for piece in serialize(p, hd, dd))


class Owner:
    """Records what the framer hands over, in order; optionally places segments."""

    def __init__(self, limit: int = 1 << 16, hd: bool = False, dd: bool = False, *,
                 place_min: int = 1, buffer_bytes: int | None = None) -> None:
        size = buffer_bytes or receive_buffer_bytes(limit, 1)
        self.framer = Framer(memoryview(bytearray(size)), self.pdu, self.error,
                             max_data_segment=limit, place_min=place_min)
        self.framer.set_full_feature(limit, hd, dd)
        self.events: list[Event] = []
        #: Where placed segments go: (offset in `dest`, number of views) per placed PDU.
        self.dest = memoryview(bytearray(1 << 20))
        self.offered: list[int] = []

    def place(self, pieces: int = 1) -> None:
        """Place every segment offered at buffer_offset in `dest`, as `pieces` views."""

        def placement(bhs: memoryview) -> list[memoryview] | None:
            dsl = int.from_bytes(bhs[5:8], "big")
            self.offered.append(dsl)
            at = int.from_bytes(bhs[40:44], "big")
            cuts = [at + dsl * i // pieces for i in range(pieces + 1)]
            return [self.dest[a:b] for a, b in itertools.pairwise(cuts)]

        self.framer.placement = placement

    def pdu(self, pdu: P.Pdu, placed: bool) -> None:
        self.events.append(("placed" if placed else "pdu", detached(pdu)))

    def error(self, header: memoryview, exc: ProtocolError) -> None:
        self.events.append(("error", exc))

    def pdus(self) -> list[Any]:
        return [pdu for kind, pdu in self.events if kind != "error"]

    def errors(self) -> list[ProtocolError]:
        return [exc for kind, exc in self.events if kind == "error"]

    def receive(self, data: bytes, cuts: Sequence[int] = (1 << 30,)) -> None:
        """As a transport does: into whatever get_buffer offers, at most `cuts[i]` a read."""
        framer, pos, i = self.framer, 0, 0
        while pos < len(data):
            dest = framer.get_buffer(-1)
            n = min(len(dest), cuts[i % len(cuts)], len(data) - pos)
            assert n > 0
            dest[:n] = data[pos : pos + n]
            pos += n
            i += 1
            framer.received(n)


# ---------------------------------------------------------------- reassembly


@given(
    st.lists(ANY_PDU, max_size=6), st.booleans(), st.booleans(),
    st.lists(st.integers(1, 200), min_size=1, max_size=20),
)
def test_stream_round_trip_in_arbitrary_chunks(
    pdus: list[Any], hd: bool, dd: bool, cuts: list[int]
) -> None:
    owner = Owner(1024, hd, dd)
    owner.receive(wire(pdus, hd, dd), cuts)
    assert owner.events == [("pdu", p) for p in pdus]
    assert owner.framer.buffered == 0


@given(
    st.lists(ANY_PDU, max_size=6), st.booleans(), st.integers(1, 3),
    st.lists(st.integers(1, 200), min_size=1, max_size=20),
)
def test_placing_every_segment_still_arriving_gives_the_same_pdus(
    pdus: list[Any], digests: bool, pieces: int, cuts: list[int]
) -> None:
    owner = Owner(1024, digests, digests)

    def placement(bhs: memoryview) -> list[memoryview]:
        dsl = P.bhs_lengths(bhs)[1]
        return [memoryview(bytearray(dsl * (i + 1) // pieces - dsl * i // pieces))
                for i in range(pieces)]

    owner.framer.placement = placement
    owner.receive(wire(pdus, digests, digests), cuts)
    assert owner.pdus() == pdus and not owner.errors()
    assert owner.framer.buffered == 0


def _mixed(big: bytes) -> list[Any]:
    return [
        P.NopIn(itt=0xFFFFFFFF, ttt=3, stat_sn=1, exp_cmd_sn=2, max_cmd_sn=9, data=b"hi"),
        P.DataOut(itt=1, buffer_offset=0, data=big),
        P.ScsiCommand(itt=2, cdb=bytes(16), data=os.urandom(7)),
        P.DataIn(itt=1, buffer_offset=len(big), data=big[:9]),
        P.ScsiResponse(itt=2, status=0, stat_sn=7),
    ]


@pytest.mark.parametrize("digests", [False, True])
@pytest.mark.parametrize("pieces", [0, 1, 3])
def test_a_split_at_every_byte_gives_the_same_pdus(digests: bool, pieces: int) -> None:
    big = os.urandom(301)  # odd: padding after a placed segment
    pdus = _mixed(big)
    data = wire(pdus, digests, digests)
    for cut in range(len(data) + 1):
        owner = Owner(1024, digests, digests, place_min=64)
        if pieces:
            owner.place(pieces)
        owner.receive(data[:cut])
        owner.receive(data[cut:])
        assert owner.pdus() == pdus and not owner.errors(), cut
        kinds = [kind for kind, _ in owner.events]
        # A segment is placed only when it is still arriving once its header is in.
        head = 48 + (4 if digests else 0)
        placed = pieces and head <= cut - len(wire(pdus[:1], digests, digests)) < head + 301
        assert kinds[1] == ("placed" if placed else "pdu"), cut
        if placed:
            assert bytes(owner.dest[: len(big)]) == big
        assert owner.framer.buffered == 0


def test_one_byte_at_a_time_through_a_buffer_that_must_compact() -> None:
    pdus = [P.NopOut(itt=i, data=os.urandom(i * 37 % 500)) for i in range(40)]
    owner = Owner(512)  # a 2 KiB buffer: the stream is 10 KiB
    assert len(owner.framer.get_buffer(-1)) < len(wire(pdus))
    owner.receive(wire(pdus), [1, 2, 3, 1000, 5])
    assert owner.pdus() == pdus


def test_room_is_made_before_it_runs_out() -> None:
    # A PDU that cannot fit after where it starts: its header moves to the front at
    # once (48 bytes), not the whole PDU once the buffer's end is reached.
    owner = Owner(65536)  # a 128 KiB buffer
    big = wire([P.NopOut(itt=1, data=bytes(65536))])
    owner.receive(big + big[:48])
    assert owner.framer.buffered == 48
    assert len(owner.framer.get_buffer(-1)) == (1 << 17) - 48
    # Little room left at the end: the unparsed bytes move to the front before a read.
    owner = Owner(4096)  # an 8 KiB buffer
    owner.receive(wire([P.NopOut(itt=2, data=bytes(4096))]) + big[:20])
    assert [p.itt for p in owner.pdus()] == [2] and owner.framer.buffered == 20
    assert len(owner.framer.get_buffer(-1)) == 8192 - 20


def test_set_digests_after_login() -> None:
    owner = Owner(8192)
    owner.framer.set_full_feature(8192, False, False)
    login = P.LoginResponse(transit=True, csg=1, nsg=3)
    owner.receive(wire([login]))
    owner.framer.set_full_feature(8192, True, True)
    nop = P.NopIn(data=b"ping")
    owner.receive(wire([nop], True, True))
    assert owner.pdus() == [login, nop]


def test_the_buffer_must_hold_the_largest_pdu_accepted() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        Owner(8192, buffer_bytes=8192)
    owner = Owner(8192)
    with pytest.raises(ValueError, match="cannot hold"):
        owner.framer.set_full_feature(65536, False, False)


@given(st.binary(max_size=400), st.booleans(), st.booleans())
def test_garbage_raises_only_protocol_error(blob: bytes, hd: bool, dd: bool) -> None:
    owner = Owner(256, hd, dd)
    owner.receive(blob)  # raises nothing: every complaint goes to on_error
    for exc in owner.errors():
        assert isinstance(exc, ProtocolError) and exc.reason


# ---------------------------------------------------------------- limits and digests


def test_mrdsl_exceeded_message() -> None:
    owner = Owner(262144)
    big = P.encode_header(P.DataOut(data=b"x" * 300))
    big = big[:5] + (16777215).to_bytes(3, "big") + big[8:]
    owner.receive(big)
    (error,) = owner.errors()
    assert error.reason == (
        "data segment length 16777215 exceeds MaxRecvDataSegmentLength 262144"
    )
    assert error.reject is RejectReason.PROTOCOL_ERROR
    assert owner.framer.error is error
    owner.receive(wire([P.NopOut()]))  # the stream stays dead
    assert owner.pdus() == [] and owner.errors() == [error]


def test_header_digest_error_is_fatal_but_earlier_pdus_are_delivered() -> None:
    first = wire([P.NopOut(itt=1)], True, False)
    bad = bytearray(wire([P.NopOut(itt=2)], True, False))
    bad[20] ^= 1
    owner = Owner(8192, hd=True)
    owner.receive(first + bytes(bad) + first)
    assert [kind for kind, _ in owner.events] == ["pdu", "error"]
    assert owner.pdus()[0].itt == 1
    (error,) = owner.errors()
    assert isinstance(error, DigestError) and error.header
    assert error.reject is None  # a header that failed its digest is not quoted
    assert owner.framer.error is error
    owner.receive(first)
    assert len(owner.events) == 2


def test_data_digest_error_skips_only_that_pdu() -> None:
    pdus = [P.DataOut(itt=i, data=bytes([i]) * 5) for i in range(3)]
    stream = bytearray(wire(pdus, False, True))
    one = len(stream) // 3
    stream[one + 48] ^= 0xFF  # corrupt data of the second PDU
    owner = Owner(8192, dd=True)
    owner.receive(bytes(stream))
    assert [kind for kind, _ in owner.events] == ["pdu", "error", "pdu"]
    assert [p.itt for p in owner.pdus()] == [0, 2]
    (error,) = owner.errors()
    assert isinstance(error, DigestError) and not error.header
    assert "data digest mismatch on a 5-byte" in error.reason
    assert error.reject is RejectReason.DATA_DIGEST_ERROR
    assert owner.framer.error is None


@pytest.mark.parametrize("pieces", [1, 2])
def test_a_placed_segment_has_its_data_digest_checked(pieces: int) -> None:
    big = os.urandom(1001)
    data = bytearray(wire([P.DataIn(itt=1, data=big), P.NopIn(itt=2)], True, True))
    data[52 + 1001 + 3] ^= 1  # the data digest (after the header, its digest, data, pad)
    owner = Owner(4096, True, True)
    owner.place(pieces)
    owner.receive(bytes(data[:100]))
    assert owner.offered == [1001]
    owner.receive(bytes(data[100:]))
    assert [kind for kind, _ in owner.events] == ["error", "pdu"]
    assert owner.errors()[0].reject is RejectReason.DATA_DIGEST_ERROR


@pytest.mark.parametrize("pieces", [1, 2])
def test_a_placed_segment_digest_covers_the_padding_as_received(pieces: int) -> None:
    # Found by the stream fuzzer (tests/fuzz/crashes/stream/crash-68375af3...): padding
    # that is not zero (SHOULD be) passed the digest unplaced, and failed it placed.
    big = os.urandom(1001)
    data = bytearray(wire([P.DataIn(itt=1, data=big), P.NopIn(itt=2)], True, True))
    data[52 + 1001 : 52 + 1004] = b"pad"
    data[52 + 1004 : 52 + 1008] = crc32c(bytes(data[52 : 52 + 1004])).to_bytes(4, "little")
    for place in (False, True):
        owner = Owner(4096, True, True)
        if place:
            owner.place(pieces)
        owner.receive(bytes(data[:100]))
        owner.receive(bytes(data[100:]))
        assert [kind for kind, _ in owner.events] == ["placed" if place else "pdu", "pdu"]
        assert owner.pdus()[0].data == big


def test_an_unknown_opcode_is_reported_and_parsing_goes_on() -> None:
    unknown = bytearray(wire([P.NopOut(itt=1)]))
    unknown[0] = 0x1B
    owner = Owner()
    owner.receive(bytes(unknown) + wire([P.NopOut(itt=2)]))
    (error,) = owner.errors()
    assert error.reject is RejectReason.COMMAND_NOT_SUPPORTED
    assert [p.itt for p in owner.pdus()] == [2]


def test_rules_the_lengths_cannot_break_are_still_checked_and_parsing_goes_on() -> None:
    # The framer cuts the AHS and data by the BHS's own lengths, so it decodes without
    # re-checking them (`decode_framed`); what a well-framed PDU can still get wrong is
    # refused: a data segment on a PDU that has none, an AHS on one that defines none.
    with_data = bytearray(P.encode_header(P.LogoutRequest(itt=1)))
    with_data[5:8] = (4).to_bytes(3, "big")
    with_ahs = bytearray(P.encode_header(P.NopOut(itt=2)))
    with_ahs[4] = 1  # TotalAHSLength: one word, which follows the BHS
    owner = Owner()
    owner.receive(bytes(with_data) + b"abcd" + bytes(with_ahs) + bytes(4)
                  + wire([P.NopOut(itt=3)]))
    assert [str(e) for e in owner.errors()] == [
        "LOGOUT_REQUEST with a 4-byte data segment", "AHS present on NOP_OUT, which defines none"]
    assert [p.itt for p in owner.pdus()] == [3]


# ---------------------------------------------------------------- placement


@pytest.mark.parametrize("pieces", [1, 4])
def test_a_segment_still_arriving_is_received_into_the_owners_views(pieces: int) -> None:
    big = os.urandom(4000)
    data = wire([P.DataOut(itt=1, buffer_offset=8, data=big), P.NopOut(itt=2)])
    owner = Owner(8192)
    owner.place(pieces)
    owner.receive(data[:148])  # the header and 100 bytes of the segment
    assert owner.offered == [4000] and owner.events == []
    view = owner.framer.get_buffer(-1)
    assert view.obj is owner.dest.obj  # received where it belongs, not in the buffer
    assert len(view) == 4000 // pieces - 100
    owner.receive(data[148:])
    assert [kind for kind, _ in owner.events] == ["placed", "pdu"]
    assert bytes(owner.dest[8 : 8 + 4000]) == big
    assert owner.pdus()[0].data == big


def test_small_segments_and_refused_placements_stay_in_the_buffer() -> None:
    data = wire([P.DataIn(itt=1, data=os.urandom(100)), P.DataIn(itt=2, data=os.urandom(900))])
    owner = Owner(place_min=500)
    offered: list[int] = []

    def refuse(bhs: memoryview) -> None:
        offered.append(P.bhs_lengths(bhs)[1])

    owner.framer.placement = refuse
    owner.receive(data, [60])
    assert offered and set(offered) == {900}  # never the 100-byte one
    assert [kind for kind, _ in owner.events] == ["pdu", "pdu"]


def test_a_small_data_in_is_handed_over_without_a_pdu_object() -> None:
    pdus = [P.DataIn(itt=1, data=b"abcde", stat_sn=3), P.R2T(itt=2),
            P.DataIn(itt=3, data=os.urandom(3000))]
    owner = Owner(place_min=1000)
    owner.place()
    got: list[tuple[int, bytes]] = []

    def data_in(header: memoryview, at: int, data: memoryview) -> None:
        assert header[at] & 0x3F == 0x25
        got.append((int.from_bytes(header[at + 16 : at + 20], "big"), bytes(data)))

    owner.framer.on_answer = data_in
    data = wire(pdus)
    owner.receive(data[: len(data) - 10])
    owner.receive(data[len(data) - 10 :])
    assert got == [(1, b"abcde")]
    # The placed one comes as a PDU: the owner is told its data is where it placed it.
    assert [(kind, type(p).__name__) for kind, p in owner.events] == [
        ("pdu", "R2T"), ("placed", "DataIn")]


# ---------------------------------------------------------------- flow control


def test_a_refused_admission_pauses_before_that_pdu_until_resumed() -> None:
    pdus = [P.NopIn(itt=i, data=b"x" * 2000 * (i % 2)) for i in range(4)]
    owner = Owner(place_min=1000)
    owner.place()
    asked: list[int] = []
    refuse = {1, 2}

    def admit(bhs: memoryview) -> bool:
        itt = int.from_bytes(bhs[16:20], "big")
        asked.append(itt)
        if itt in refuse:
            refuse.discard(itt)
            return False
        return True

    owner.framer.admit = admit
    data = wire(pdus)
    owner.receive(data[:200])  # PDU 1's segment is still arriving: placement is asked first
    assert owner.framer.paused and [p.itt for p in owner.pdus()] == [0]
    owner.framer.resume()
    owner.framer.received(0)
    assert not owner.framer.paused
    owner.receive(data[200:])
    assert owner.framer.paused and [p.itt for p in owner.pdus()] == [0, 1]
    owner.framer.resume()
    owner.framer.received(0)
    assert [p.itt for p in owner.pdus()] == [0, 1, 2, 3]
    assert asked == [0, 1, 1, 2, 2, 3]
    assert owner.events[1][0] == "placed"


def test_paused_keeps_bytes_and_stopped_drops_everything() -> None:
    owner = Owner()
    owner.framer.pause()
    owner.receive(wire([P.NopOut(itt=1)]))
    assert owner.events == [] and owner.framer.buffered == 48
    owner.framer.resume()
    owner.framer.received(0)
    assert [p.itt for p in owner.pdus()] == [1]
    owner.framer.pause()
    owner.receive(wire([P.NopOut(itt=2)]))
    owner.framer.stop()
    owner.framer.feed(wire([P.NopOut(itt=3)]))  # dropped
    assert owner.framer.buffered == 48
    owner.framer.resume()  # a stopped framer stays stopped
    owner.framer.received(0)
    assert [p.itt for p in owner.pdus()] == [1]


def test_the_owner_can_stop_the_framer_from_a_hook() -> None:
    owner = Owner()

    def stop_at_first(pdu: P.Pdu, placed: bool) -> None:
        owner.pdu(pdu, placed)
        owner.framer.stop()

    owner.framer.on_pdu = stop_at_first
    owner.receive(wire([P.NopOut(itt=1), P.NopOut(itt=2)]))
    assert [p.itt for p in owner.pdus()] == [1]


def test_receive_buffer_sizes() -> None:
    # One rule: whole PDUs of the largest size accepted, as a power of two.
    assert receive_buffer_bytes(65536, 1) == 1 << 17
    assert receive_buffer_bytes(262144, 2) == 1 << 20
    assert receive_buffer_bytes(262144, 1) == 1 << 19
