"""Framing and digests: stream reassembly, digest checks, limits."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from earmark.iscsi import pdu as P
from earmark.iscsi.digest import data_digest, header_digest, padded_length, padding
from earmark.iscsi.errors import DigestError, ProtocolError
from earmark.iscsi.framing import PduReader, serialize
from tests.iscsi.test_pdu import ANY_PDU


def wire(pdus: list[Any], hd: bool, dd: bool) -> bytes:
    return b"".join(bytes(piece) for p in pdus for piece in serialize(p, hd, dd))


def test_rfc3720_crc32c_vectors_in_wire_byte_order() -> None:
    # RFC 3720 Appendix B.4 gives these CRCs as the bytes sent on the wire.
    assert header_digest(bytes(32)) == bytes.fromhex("aa36918a")
    assert header_digest(b"\xff" * 32) == bytes.fromhex("43aba862")
    assert header_digest(bytes(range(32))) == bytes.fromhex("4e79dd46")


def test_data_digest_covers_padding() -> None:
    assert data_digest(b"abc") == header_digest(b"abc\0")
    assert padding(5) == b"\0\0\0" and padding(8) == b"" and padded_length(5) == 8


@given(
    st.lists(ANY_PDU, max_size=6), st.booleans(), st.booleans(),
    st.lists(st.integers(1, 200), min_size=1, max_size=20),
)
def test_stream_round_trip_in_arbitrary_chunks(
    pdus: list[Any], hd: bool, dd: bool, cuts: list[int]
) -> None:
    stream = wire(pdus, hd, dd)
    reader = PduReader(1 << 24, header_digest=hd, data_digest=dd)
    got: list[Any] = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got += reader.feed(stream[pos : pos + step])
        pos += step
        i += 1
    assert got == pdus
    assert reader.buffered == 0


def test_serialize_pieces() -> None:
    data = memoryview(b"hello")
    pieces = serialize(P.DataOut(data=data), True, True)
    assert len(pieces) == 3
    assert len(pieces[0]) == 52
    assert pieces[1] is data
    assert pieces[2] == b"\0\0\0" + data_digest(b"hello")
    assert serialize(P.NopOut(), False, True) == [P.encode_header(P.NopOut())]


def test_mrdsl_exceeded_message() -> None:
    reader = PduReader(262144)
    big = P.encode_header(P.DataOut(data=b"x" * 300))
    big = big[:5] + (16777215).to_bytes(3, "big") + big[8:]
    with pytest.raises(ProtocolError) as info:
        reader.feed(big)
    assert info.value.reason == (
        "data segment length 16777215 exceeds MaxRecvDataSegmentLength 262144"
    )
    with pytest.raises(ProtocolError):  # the stream stays dead
        reader.feed(b"")


def test_header_digest_error_is_fatal_but_earlier_pdus_are_delivered() -> None:
    first = wire([P.NopOut(itt=1)], True, False)
    bad = bytearray(wire([P.NopOut(itt=2)], True, False))
    bad[20] ^= 1
    reader = PduReader(8192, header_digest=True)
    got = reader.feed(first + bytes(bad))
    assert [p.itt for p in got] == [1]  # type: ignore[union-attr]
    with pytest.raises(DigestError) as info:
        reader.feed(first)
    assert info.value.header
    with pytest.raises(DigestError):
        reader.feed(b"")


def test_data_digest_error_skips_only_that_pdu() -> None:
    pdus = [P.DataOut(itt=i, data=bytes([i]) * 5) for i in range(3)]
    stream = bytearray(wire(pdus, False, True))
    one = len(stream) // 3
    stream[one + 48] ^= 0xFF  # corrupt data of the second PDU
    reader = PduReader(8192, data_digest=True)
    assert [p.itt for p in reader.feed(bytes(stream))] == [0]  # type: ignore[union-attr]
    with pytest.raises(DigestError, match="data digest mismatch on a 5-byte") as info:
        reader.feed(b"")
    assert not info.value.header
    assert [p.itt for p in reader.feed(b"")] == [2]  # type: ignore[union-attr]


def test_set_digests_after_login() -> None:
    reader = PduReader(8192)
    login = P.LoginResponse(transit=True, csg=1, nsg=3)
    assert reader.feed(wire([login], False, False)) == [login]
    reader.set_digests(True, True)
    nop = P.NopIn(data=b"ping")
    assert reader.feed(wire([nop], True, True)) == [nop]


@given(st.binary(max_size=400), st.booleans(), st.booleans())
def test_garbage_raises_only_protocol_error(blob: bytes, hd: bool, dd: bool) -> None:
    reader = PduReader(256, header_digest=hd, data_digest=dd)
    try:
        reader.feed(blob)
        reader.feed(b"")
    except ProtocolError as exc:
        assert exc.reason
