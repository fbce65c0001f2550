"""Byte stream <-> PDUs, with length limits and digests.

The real runtime reads straight into reserved buffers using
:func:`~earmark.iscsi.pdu.bhs_lengths`; :class:`PduReader` is the incremental
version for the simulator and tests, and the reference for what must be
checked on every PDU.
"""

from __future__ import annotations

from crc32c import crc32c

from .digest import DIGEST_LENGTH, data_digest, header_digest, padding
from .errors import DigestError, ProtocolError
from .pdu import (
    BHS_LENGTH,
    MAX_DATA_SEGMENT_LENGTH,
    Buffer,
    Pdu,
    bhs_lengths,
    decode_pdu,
    encode_header,
)


class PduReader:
    """Incremental PDU parser for one direction of one connection.

    Errors are raised only once every PDU before the offending one has been
    returned: a ``feed`` that meets an error after decoding some PDUs returns
    those, and raises on the next call. After a header digest error or a
    framing error the stream is unusable and the reader keeps raising; after a
    :class:`DigestError` on data (``header=False``) the bad PDU has been skipped
    and feeding may continue, as RFC 7143 §7.8 allows.
    """

    __slots__ = (
        "_buf",
        "_data_digest",
        "_error",
        "_fatal",
        "_header_digest",
        "max_recv_data_segment_length",
    )

    def __init__(
        self,
        max_recv_data_segment_length: int,
        header_digest: bool = False,
        data_digest: bool = False,
    ) -> None:
        self.max_recv_data_segment_length = max_recv_data_segment_length
        self._header_digest = header_digest
        self._data_digest = data_digest
        self._buf = bytearray()
        self._error: ProtocolError | None = None
        self._fatal = False

    def set_digests(self, header_digest: bool, data_digest: bool) -> None:
        """Switch digests on at the end of login (they apply from the next PDU)."""
        self._header_digest = header_digest
        self._data_digest = data_digest

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete PDU."""
        return len(self._buf)

    def feed(self, data: Buffer) -> list[Pdu]:
        buf = self._buf
        buf += data
        if self._error is not None:
            error = self._error
            if not self._fatal:
                self._error = None
            raise error
        pdus: list[Pdu] = []
        pos = 0
        try:
            while True:
                consumed, bad_data = self._one(buf, pos, pdus)
                if consumed == 0:
                    break
                pos += consumed
                if bad_data is not None:
                    raise bad_data
        except ProtocolError as exc:
            self._fatal = not (isinstance(exc, DigestError) and not exc.header)
            if pdus or self._fatal:
                self._error = exc
            if not pdus:
                raise
        finally:
            del buf[:pos]
        return pdus

    def _one(
        self, buf: bytearray, pos: int, out: list[Pdu]
    ) -> tuple[int, DigestError | None]:
        """Decode the PDU at ``pos`` into ``out``.

        Returns the bytes it spans (0 if incomplete) and, for a data digest
        mismatch, the error to raise once those bytes are skipped.
        """
        avail = len(buf) - pos
        if avail < BHS_LENGTH:
            return 0, None
        ahs_length, dsl = bhs_lengths(memoryview(buf)[pos : pos + BHS_LENGTH])
        if dsl > self.max_recv_data_segment_length:
            raise ProtocolError(
                f"data segment length {dsl} exceeds MaxRecvDataSegmentLength "
                f"{self.max_recv_data_segment_length}"
            )
        hd = DIGEST_LENGTH if self._header_digest else 0
        header_end = pos + BHS_LENGTH + ahs_length
        data_start = header_end + hd
        padded = (dsl + 3) & ~3
        dd = DIGEST_LENGTH if self._data_digest and dsl else 0
        total = BHS_LENGTH + ahs_length + hd + padded + dd
        if avail < total:
            return 0, None
        if hd and header_digest(memoryview(buf)[pos:header_end]) != buf[header_end:data_start]:
            raise DigestError("header digest mismatch", header=True)
        data = bytes(buf[data_start : data_start + dsl])
        if dd:
            pad_end = data_start + padded
            if data_digest(data) != buf[pad_end : pad_end + dd]:
                return total, DigestError(
                    f"data digest mismatch on a {dsl}-byte data segment", header=False
                )
        out.append(
            decode_pdu(
                bytes(buf[pos : pos + BHS_LENGTH]),
                bytes(buf[pos + BHS_LENGTH : header_end]),
                data,
            )
        )
        return total, None


def serialize(pdu: Pdu, header_digest_on: bool, data_digest_on: bool) -> list[Buffer]:
    """Wire pieces of ``pdu`` for ``writelines``; the data segment is not copied."""
    return frame(encode_header(pdu), getattr(pdu, "data", b""), header_digest_on,
                 data_digest_on)


def frame(header: bytes, data: Buffer, header_digest_on: bool,
          data_digest_on: bool) -> list[Buffer]:
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
) -> list[Buffer]:
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
    out: list[Buffer] = [header, *pieces]
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
