"""The send side of framing (wire pieces, padding, digests) and the CRC32C digests.

The receive side is tests/test_iscsi_stream.py."""

from __future__ import annotations

from earmark.iscsi import pdu as P
from earmark.iscsi.digest import data_digest, header_digest, padded_length, padding
from earmark.iscsi.framing import serialize


def test_rfc3720_crc32c_vectors_in_wire_byte_order() -> None:
    # RFC 3720 Appendix B.4 gives these CRCs as the bytes sent on the wire.
    assert header_digest(bytes(32)) == bytes.fromhex("aa36918a")
    assert header_digest(b"\xff" * 32) == bytes.fromhex("43aba862")
    assert header_digest(bytes(range(32))) == bytes.fromhex("4e79dd46")


def test_data_digest_covers_padding() -> None:
    assert data_digest(b"abc") == header_digest(b"abc\0")
    assert padding(5) == b"\0\0\0" and padding(8) == b"" and padded_length(5) == 8


def test_serialize_pieces() -> None:
    data = memoryview(b"hello")
    pieces = serialize(P.DataOut(data=data), True, True)
    assert len(pieces) == 3
    assert len(pieces[0]) == 52
    assert pieces[1] is data
    assert pieces[2] == b"\0\0\0" + data_digest(b"hello")
    assert serialize(P.NopOut(), False, True) == [P.encode_header(P.NopOut())]
