"""The one PDU framer: bytes in, PDUs out, for either end of a connection.

Sans-I/O: whoever reads the socket asks :meth:`Framer.get_buffer` where to
receive and says how many bytes came with :meth:`Framer.received`, which parses
them; PDUs come out through the owner's hooks, called in wire order. That is
asyncio's ``BufferedProtocol`` shape (``get_buffer``, ``buffer_updated``), so an
adapter passes both calls straight through and a blocking engine makes them
around ``recv_into``.

Every rule a received PDU must pass is checked here once: MaxRecvDataSegmentLength,
header and data digests, AHS and padding. A data segment still arriving can be
*placed*: once its BHS is in, the ``placement`` hook names where the segment
belongs (a command's reserved buffer), what already arrived is moved there, and
``get_buffer`` hands out those views until the segment is in, so it is received
where it belongs with no further copy. A Data-In not placed and a SCSI Response,
the answers to commands, are handed over as their header and data views
(``on_answer``), with no PDU object built: those answer every small read and every
write.

The hooks are plain attributes, looked up once per PDU like the fields of any
slotted object; a hook left None costs one test. Errors go to ``on_error`` in
order with the PDUs (everything before the offending PDU has been delivered).
After a header digest mismatch or a segment over the limit the stream is lost:
``error`` is set and nothing more is parsed. After a data digest mismatch or a
PDU that does not decode, that PDU is skipped and parsing goes on (RFC 7143
§7.8), unless the owner stops the framer from its hook.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from .digest import DIGEST_LENGTH, crc32c
from .errors import DigestError, ProtocolError
from .opcodes import Opcode
from .pdu import BHS_LENGTH, Pdu, WireBytes, decode_framed

__all__ = [
    "Admit",
    "AnswerHandler",
    "ErrorHandler",
    "Framer",
    "PduHandler",
    "Placement",
    "detached",
    "receive_buffer_bytes",
]

_MAX_AHS = 255 * 4
"""Largest AHS a BHS can announce (TotalAHSLength is one byte of 4-byte words)."""
_lengths = struct.Struct(">I").unpack_from  # TotalAHSLength and DataSegmentLength
_le32 = struct.Struct("<I").unpack_from  # a digest
_DATA_IN = int(Opcode.DATA_IN)
_ANSWERS = frozenset((_DATA_IN, int(Opcode.SCSI_RESPONSE)))
_LOW_WATER = 4096
"""Less room than this after the last byte received, and bytes parsed before the
first unparsed one: the unparsed tail moves to the front before the next read,
so reads are not cut short."""

PduHandler = Callable[[Pdu, bool], None]
"""A decoded PDU, and whether its data segment was placed."""
AnswerHandler = Callable[[memoryview, int, memoryview], None]
"""A Data-In not placed or a SCSI Response, with no AHS: the buffer holding its BHS at
the offset given, and its data segment."""
Placement = Callable[[memoryview], Sequence[memoryview] | None]
"""Where the data segment of the PDU with this BHS belongs, or None to receive it in
the receive buffer as usual; the views must add up to its DataSegmentLength."""
Admit = Callable[[memoryview], bool]
"""Asked with each BHS before its PDU is taken; False pauses the framer there."""
ErrorHandler = Callable[[memoryview, ProtocolError], None]
"""The BHS of a PDU that broke a rule, and the error (``error.reject`` answers it)."""


def _largest_pdu(mrdsl: int) -> int:
    return BHS_LENGTH + _MAX_AHS + 2 * DIGEST_LENGTH + mrdsl + 3


def receive_buffer_bytes(mrdsl: int, pdus: int) -> int:
    """Receive buffer of one connection: room for ``pdus`` whole PDUs of the largest
    size we accept, rounded up to a power of two so the arena hands it out as one run.

    The framer needs one: a segment that is not placed must fit whole. The target
    asks for two (``earmark.target.portal.RECV_PDUS``): Data-Out is placed in its
    command's buffer, but immediate data is not, and with room for one a stream of
    such writes is read one PDU per read. The initiator asks for two: its buffer
    holds batches of small Data-In parsed in place, and with two a whole PDU still
    fits after a partial one without compacting on every read.
    """
    return 1 << (pdus * _largest_pdu(mrdsl) - 1).bit_length()


def detached(pdu: Pdu) -> Pdu:
    """``pdu`` with its data segment copied out of the receive buffer, for keeping it
    past the next read (the framer reuses the buffer)."""
    data = getattr(pdu, "data", b"")
    if isinstance(data, memoryview):
        pdu.data = bytes(data)  # type: ignore[union-attr]
    return pdu


class Framer:
    """Incremental PDU parser over one receive buffer, for one direction of one connection.

    ``buffer`` is the connection's receive buffer (a reserved one, in the
    runtime); it must hold one whole PDU of the largest size accepted. Segments
    of at least ``place_min`` bytes still arriving are offered to ``placement``.
    """

    __slots__ = (
        "_buf",
        "_dd",
        "_end",
        "_halted",
        "_hd",
        "_into",
        "_max_dsl",
        "_place_min",
        "_placed",
        "_start",
        "_stopped",
        "admit",
        "error",
        "on_answer",
        "on_error",
        "on_pdu",
        "paused",
        "placement",
    )

    def __init__(
        self,
        buffer: memoryview,
        on_pdu: PduHandler,
        on_error: ErrorHandler,
        *,
        max_data_segment: int,
        place_min: int = 1,
    ) -> None:
        self._buf = buffer
        self._start = 0
        self._end = 0
        self._hd = 0
        self._dd = 0
        self._max_dsl = 0
        self._place_min = place_min
        #: Views still to receive the placed segment into, and all of its views.
        self._into: list[memoryview] = []
        self._placed: Sequence[memoryview] | None = None
        self.on_pdu = on_pdu
        self.on_error = on_error
        self.on_answer: AnswerHandler | None = None
        self.placement: Placement | None = None
        self.admit: Admit | None = None
        #: The error that lost the stream, once one has.
        self.error: ProtocolError | None = None
        self.paused = False
        self._stopped = False
        self._halted = False
        self.set_full_feature(max_data_segment, False, False)

    def set_full_feature(self, max_data_segment: int, header_digest: bool,
                         data_digest: bool) -> None:
        """Login is over: the negotiated limit and digests apply from the next PDU."""
        if _largest_pdu(max_data_segment) > len(self._buf):
            raise ValueError(f"a {len(self._buf)}-byte receive buffer cannot hold a PDU "
                             f"with a {max_data_segment}-byte data segment")
        self._max_dsl = max_data_segment
        self._hd = DIGEST_LENGTH if header_digest else 0
        self._dd = DIGEST_LENGTH if data_digest else 0

    @property
    def header_digest(self) -> bool:
        return bool(self._hd)

    @property
    def data_digest(self) -> bool:
        return bool(self._dd)

    @property
    def buffered(self) -> int:
        """Bytes received into the buffer and not yet part of a PDU delivered."""
        return self._end - self._start

    def move_to(self, buffer: memoryview) -> None:
        """Go on in `buffer`, with what is buffered: a target connection's login-sized
        receive buffer gives way to its session's at the end of login."""
        if self._into:
            raise ValueError("cannot move the receive buffer while a segment is placed")
        n = self._end - self._start
        if n > len(buffer):
            raise ValueError(f"{n} buffered bytes do not fit a {len(buffer)}-byte buffer")
        buffer[:n] = self._buf[self._start : self._end]
        self._buf, self._start, self._end = buffer, 0, n

    # ------------------------------------------------------------ flow control

    def pause(self) -> None:
        """Deliver nothing more until :meth:`resume` (bytes received are kept)."""
        self.paused = self._halted = True

    def resume(self) -> None:
        """Undo :meth:`pause` (or a refused ``admit``); ``received(0)`` goes on from there."""
        self.paused = False
        self._halted = self._stopped

    def stop(self) -> None:
        """The connection is ending: nothing more is delivered, ever."""
        self._stopped = self._halted = True

    # ------------------------------------------------------------ receiving

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the next bytes read should go: a placed segment's view, or the buffer."""
        into = self._into
        if into:
            return into[0]
        buf, start, end = self._buf, self._start, self._end
        if start and len(buf) - end < _LOW_WATER:
            buf[: end - start] = buf[start:end]
            self._start, self._end = 0, end - start
            return buf[end - start :]
        return buf[end:]

    def feed(self, data: WireBytes) -> None:
        """Take bytes read elsewhere as if they had been received in place, parsing as
        they come. On a stopped framer they are dropped."""
        view = memoryview(data).cast("B")
        while view and not self._stopped:
            dest = self.get_buffer(len(view))
            n = min(len(dest), len(view))
            if not n:
                raise BufferError("the receive buffer is full while the framer is paused")
            dest[:n] = view[:n]
            view = view[n:]
            self.received(n)

    def received(self, nbytes: int) -> bool:
        """``nbytes`` were read into the last :meth:`get_buffer` view: deliver every PDU
        the buffer now completes, in order, until it runs short of bytes, a segment is
        being placed, or the framer is paused or stopped. ``received(0)`` parses what
        is buffered. False when nothing could be parsed: a placed segment is still
        arriving, or the framer is paused or stopped."""
        into = self._into
        if into:
            view = into[0]
            if nbytes < len(view):
                into[0] = view[nbytes:]
                return False
            del into[0]
            if into:
                return False
        else:
            self._end += nbytes
        if self._halted:
            return False
        buf = self._buf
        start, end = self._start, self._end
        need = BHS_LENGTH  # bytes the PDU at `start` needs in the buffer to go on
        try:
            while not self._halted:
                avail = end - start
                if avail < BHS_LENGTH:
                    break
                lens: int = _lengths(buf, start + 4)[0]
                ahs = (lens >> 24) << 2
                dsl = lens & 0xFFFFFF
                hd = self._hd
                head = BHS_LENGTH + ahs + hd
                placed = self._placed
                if placed is None:
                    if dsl > self._max_dsl:
                        self._lost(buf[start : start + BHS_LENGTH], ProtocolError(
                            f"data segment length {dsl} exceeds MaxRecvDataSegmentLength "
                            f"{self._max_dsl}"))
                        break
                    if avail < head:
                        need = head
                        break
                    if hd and crc32c(buf[start : start + head - hd]) != _le32(
                            buf, start + head - hd)[0]:
                        self._lost(buf[start : start + BHS_LENGTH],
                                   DigestError("header digest mismatch", header=True))
                        break
                    dd = self._dd if dsl else 0
                    total = head + ((dsl + 3) & ~3) + dd
                    if avail < total:
                        if (avail - head < dsl and dsl >= self._place_min
                                and self.placement is not None):
                            views = self.placement(buf[start : start + BHS_LENGTH])
                            if views is not None:
                                admit = self.admit
                                if admit is not None and not admit(
                                        buf[start : start + BHS_LENGTH]):
                                    self.paused = self._halted = True
                                    break
                                # What arrived of the segment moves to the front of the
                                # views, the rest is received there, and what follows it
                                # on the wire is received where the segment began.
                                at, have = start + head, avail - head
                                end = at
                                rest = self._into
                                for view in views:
                                    n = len(view)
                                    if have >= n:
                                        view[:] = buf[at : at + n]
                                        at += n
                                        have -= n
                                    elif have:
                                        view[:have] = buf[at : at + have]
                                        rest.append(view[have:])
                                        have = 0
                                    elif n:
                                        rest.append(view)
                                self._placed = views
                                break
                        need = total
                        break
                    admit = self.admit
                    if admit is not None and not admit(buf[start : start + BHS_LENGTH]):
                        self.paused = self._halted = True
                        break
                    at = start
                    start += total
                    data = buf[at + head : at + head + dsl]
                    if dd and crc32c(buf[at + head : start - dd]) != _le32(buf, start - dd)[0]:
                        self.on_error(buf[at : at + BHS_LENGTH], DigestError(
                            f"data digest mismatch on a {dsl}-byte data segment",
                            header=False))
                        continue
                    on_answer = self.on_answer
                    if on_answer is not None and not ahs and buf[at] & 0x3F in _ANSWERS:
                        on_answer(buf, at, data)
                        continue
                    pdu_data: WireBytes = data
                else:
                    # The segment went to the owner's views; its padding and data
                    # digest were received after the header, where it would have been.
                    dd = self._dd
                    total = head + (-dsl & 3) + dd
                    if avail < total:
                        need = total
                        break
                    self._placed = None
                    at = start
                    start += total
                    if dd:
                        crc = 0
                        for view in placed:
                            crc = crc32c(view, crc)
                        if dsl & 3:  # the padding as received: the digest covers it
                            crc = crc32c(buf[at + head : start - dd], crc)
                        if crc != _le32(buf, start - dd)[0]:
                            self.on_error(buf[at : at + BHS_LENGTH], DigestError(
                                f"data digest mismatch on a {dsl}-byte data segment",
                                header=False))
                            continue
                    pdu_data = placed[0] if len(placed) == 1 else b"".join(placed)
                try:
                    pdu = decode_framed(buf[at : at + BHS_LENGTH],
                                        buf[at + BHS_LENGTH : at + BHS_LENGTH + ahs] if ahs
                                        else b"", pdu_data)
                except ProtocolError as exc:
                    self.on_error(buf[at : at + BHS_LENGTH], exc)
                    continue
                self.on_pdu(pdu, placed is not None)
        finally:
            if start == end:
                start = end = 0
            elif start + need > len(buf):
                buf[: end - start] = buf[start:end]
                start, end = 0, end - start
            self._start, self._end = start, end
        return True

    def _lost(self, header: memoryview, error: ProtocolError) -> None:
        self.error = error
        self.stop()
        self.on_error(header, error)
