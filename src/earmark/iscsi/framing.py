"""PDUs -> wire pieces for ``writelines``: header digest, data, padding, data digest.

The receive side, bytes -> PDUs, is :mod:`earmark.iscsi.stream`.
"""

from __future__ import annotations

from .digest import crc32c, header_digest, padding
from .pdu import MAX_DATA_SEGMENT_LENGTH, Pdu, WireBytes, encode_header


def serialize(pdu: Pdu, header_digest_on: bool, data_digest_on: bool) -> list[WireBytes]:
    """Wire pieces of ``pdu`` for ``writelines``; the data segment is not copied."""
    return frame(encode_header(pdu), getattr(pdu, "data", b""), header_digest_on,
                 data_digest_on)


def frame(header: bytes, data: WireBytes, header_digest_on: bool,
          data_digest_on: bool) -> list[WireBytes]:
    """Wire pieces of a PDU given its packed header (BHS + AHS) and data segment: for
    a hot path that packs the header directly instead of building a PDU object."""
    if header_digest_on:
        header += header_digest(header)
    if not data:
        return [header]
    pad = padding(len(data))
    if data_digest_on:
        crc = crc32c(data)
        if pad:
            crc = crc32c(pad, crc)
        return [header, data, pad + crc.to_bytes(4, "little")]
    return [header, data, pad] if pad else [header, data]


def serialize_gather(
    pdu: Pdu, pieces: list[memoryview], header_digest_on: bool, data_digest_on: bool
) -> list[WireBytes]:
    """Wire pieces of ``pdu`` whose data segment is ``pieces`` one after another.

    A write from a run of page-cache pages has its data in several buffers; they
    go to ``writelines`` as they are instead of being joined into a copy. ``pdu``
    carries no data of its own: its DataSegmentLength (BHS bytes 5-7) is set here.
    """
    n = sum(len(piece) for piece in pieces)
    if n > MAX_DATA_SEGMENT_LENGTH:
        raise ValueError(f"data segment of {n} bytes exceeds the 24-bit DataSegmentLength")
    header = encode_header(pdu)
    header = header[:5] + n.to_bytes(3, "big") + header[8:]
    if header_digest_on:
        header += header_digest(header)
    out: list[WireBytes] = [header, *pieces]
    pad = padding(n)
    if data_digest_on:
        crc = 0
        for piece in pieces:
            crc = crc32c(piece, crc)
        if pad:
            crc = crc32c(pad, crc)
        out.append(pad + crc.to_bytes(4, "little"))
    elif pad:
        out.append(pad)
    return out
