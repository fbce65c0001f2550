"""One initiator connection: a receive parser and a writer, over asyncio or a blocking socket.

The reader receives into the connection's receive buffer (a WIRE buffer from
the arena, held for the connection's life) as much as the socket has, and
parses every complete PDU in one pass (no task per PDU). When a large Data-In
segment is still arriving, it asks the session where that segment belongs
(``placement``), moves what already came there and receives the rest of it
straight into the caller's buffer.

A device whose receive buffers are allocated on arrival (the policies without
reservations) sets ``admit``: it is asked before each PDU is parsed, and when
it cannot have the PDU's buffer at once the stream stops reading (the
transport is paused and nothing more is parsed) until the device calls
:meth:`InitiatorStream.resume`. That stall is the receive side of the memory
deadlock, kept as real stacks have it.

Until a session is attached (login, SendTargets, logout of a discovery
session) PDUs go to an inbox queue one by one: those exchanges are strictly
request/response and rare, so the simplest shape is the right one there.
The target helper's ``runtime/connection.py`` is target-specific (Data-Out
placement, admission); this is the initiator's mirror of it.

:class:`PduStream` is all of that with no event loop: it is fed from whatever
reads the socket (``get_buffer`` / ``buffer_updated``, the BufferedProtocol
calls) and writes through any object with the few transport methods it uses.
:class:`InitiatorStream` is it as an asyncio protocol; the blocking engine
(``initiator_blocking``) feeds it from ``recv_into`` itself.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, cast

from earmark.initiator.failure import FailureKind
from earmark.iscsi.digest import DIGEST_LENGTH, data_digest, header_digest
from earmark.iscsi.errors import DigestError, ProtocolError
from earmark.iscsi.framing import serialize
from earmark.iscsi.login import LOGIN_MAX_SEGMENT
from earmark.iscsi.pdu import BHS_LENGTH, Buffer, Pdu, decode_pdu

__all__ = ["PLACE_MIN", "InitiatorStream", "PduStream", "StreamSink", "receive_buffer_bytes"]

_LENS = struct.Struct(">I")
_MAX_AHS = 255 * 4
_DATA_IN = 0x25

PLACE_MIN = 16384
"""Data-In segments at least this big that are still arriving are received
straight into the caller's buffer; smaller ones are copied from the receive
buffer, which costs less than the extra reads placement would take."""


def receive_buffer_bytes(mrdsl: int) -> int:
    """Receive buffer for one connection: the largest PDU we accept, twice, as a
    power of two so the arena hands it out as one run. Twice, so a whole PDU
    still fits after a partial one without compacting on every read."""
    need = BHS_LENGTH + _MAX_AHS + 2 * DIGEST_LENGTH + mrdsl + 3
    return 1 << (2 * need - 1).bit_length()


class StreamSink(Protocol):
    """Who the stream hands PDUs to in full feature phase (the device)."""

    def placement(self, bhs: memoryview) -> memoryview | None: ...

    def pdu_received(self, pdu: Pdu, placed: bool) -> None: ...

    def data_in_received(self, header: memoryview, at: int, data: memoryview) -> None:
        """A Data-In not placed, its BHS at ``header[at:]``: no PDU object is built for it
        (the reply to every small read)."""

    def batch_done(self) -> None: ...


class Transport(Protocol):
    """What a stream asks of its transport (asyncio's, or a blocking socket's)."""

    def writelines(self, pieces: Sequence[Buffer]) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class PduStream:
    """The initiator's side of one connection, without an event loop."""

    def __init__(self, buffer: memoryview) -> None:
        self._buf = buffer
        self._start = 0
        self._end = 0
        self._hd = 0
        self._dd = 0
        self._max_dsl = LOGIN_MAX_SEGMENT
        # A Data-In segment being received in place, and what follows it on the wire.
        self._dest: memoryview | None = None
        self._dest_pos = 0
        self._dest_bhs = b""
        self._tail = 0
        self._tail_pdu: Pdu | None = None
        self.sink: StreamSink | None = None
        #: Asked with each PDU's BHS before it is parsed (full feature phase only);
        #: False stops the stream until resume().
        self.admit: Callable[[memoryview], bool] | None = None
        self._paused = False
        #: PDUs that arrived while no session was attached (login, discovery).
        self.inbox: deque[Pdu] = deque()
        self.transport: Transport | None = None
        #: Why the connection ended, in words and as the kind recovery decides on.
        self.failed: str | None = None
        self.failed_kind: FailureKind | None = None

    def close(self, reason: str) -> None:
        """We end the connection (its kind: LOCAL)."""
        if self.failed is None:
            self.failed, self.failed_kind = reason, FailureKind.LOCAL
        if self.transport is not None:
            self.transport.close()

    def abort(self, reason: str, kind: FailureKind) -> None:
        """Drop the connection without waiting to flush (a dead or broken peer)."""
        if self.failed is None:
            self.failed, self.failed_kind = reason, kind
        if self.transport is not None:
            self.transport.abort()

    def set_full_feature(self, max_dsl: int, header_digest_on: bool, data_digest_on: bool) -> None:
        """Login is over: the negotiated limits and digests apply from the next PDU."""
        self._max_dsl = max_dsl
        self._hd = DIGEST_LENGTH if header_digest_on else 0
        self._dd = DIGEST_LENGTH if data_digest_on else 0

    # -------------------------------------------------------------- sending

    def write(self, pieces: list[Buffer]) -> None:
        transport = self.transport
        if transport is not None and pieces and not transport.is_closing():
            transport.writelines(pieces)

    def send(self, pdu: Pdu) -> None:
        self.write(serialize(pdu, bool(self._hd), bool(self._dd)))

    # -------------------------------------------------------------- receiving

    def resume(self) -> None:
        """What the stream stopped for is granted: parse what is buffered, read again."""
        self._paused = False
        self.buffer_updated(0)  # nothing new arrived: parse what is already here
        transport = self.transport
        if not self._paused and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _pause(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        dest = self._dest
        if dest is not None:
            return dest[self._dest_pos :]
        buf = self._buf
        if len(buf) - self._end < 4096 and self._start:
            start, end = self._start, self._end
            buf[: end - start] = buf[start:end]
            self._start, self._end = 0, end - start
        return buf[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        try:
            dest = self._dest
            if dest is not None:
                self._dest_pos += nbytes
                if self._dest_pos < len(dest):
                    return
                self._dest = None
                pdu = decode_pdu(self._dest_bhs, b"", dest)
                if self._tail:
                    self._tail_pdu = pdu
                else:
                    self._deliver(pdu, True)
            else:
                self._end += nbytes
            self._parse()
        except ProtocolError as exc:
            self.abort(f"protocol error from the target: {exc.reason}", FailureKind.PROTOCOL)
            return
        if self.sink is not None:
            self.sink.batch_done()

    def _deliver(self, pdu: Pdu, placed: bool) -> None:
        sink = self.sink
        if sink is not None:
            sink.pdu_received(pdu, placed)
            return
        data = getattr(pdu, "data", b"")
        if isinstance(data, memoryview):  # the receive buffer is reused: keep a copy
            pdu.data = bytes(data)  # type: ignore[union-attr]
        self._unattached(pdu)

    def _unattached(self, pdu: Pdu) -> None:
        self.inbox.append(pdu)

    def _parse(self) -> None:
        buf = self._buf
        start, end = self._start, self._end
        hd, dd_on = self._hd, self._dd
        admit = self.admit if self.sink is not None else None
        try:
            while True:
                if self._tail_pdu is not None:
                    if end - start < self._tail:
                        break
                    pdu, self._tail_pdu = self._tail_pdu, None
                    if dd_on:
                        data = pdu.data  # type: ignore[union-attr]
                        at = start + self._tail - DIGEST_LENGTH
                        if data_digest(data) != buf[at : at + DIGEST_LENGTH]:
                            raise DigestError("data digest mismatch on a placed segment",
                                              header=False)
                    start += self._tail
                    self._deliver(pdu, True)
                    continue
                avail = end - start
                if avail < BHS_LENGTH:
                    break
                lens: int = _LENS.unpack_from(buf, start + 4)[0]
                ahs = (lens >> 24) << 2
                dsl = lens & 0xFFFFFF
                if dsl > self._max_dsl:
                    raise ProtocolError(
                        f"data segment of {dsl} B exceeds our MaxRecvDataSegmentLength "
                        f"{self._max_dsl}"
                    )
                head = BHS_LENGTH + ahs + hd
                padded = (dsl + 3) & ~3
                dd = dd_on if dsl else 0
                total = head + padded + dd
                if avail >= total:
                    if admit is not None and not admit(buf[start : start + BHS_LENGTH]):
                        self._pause()
                        break
                    if hd and header_digest(buf[start : start + head - hd]) != buf[
                        start + head - hd : start + head
                    ]:
                        raise DigestError("header digest mismatch", header=True)
                    data = buf[start + head : start + head + dsl]
                    if dd and data_digest(data) != buf[start + head + padded : start + total]:
                        raise DigestError("data digest mismatch", header=False)
                    sink = self.sink
                    if sink is not None and not ahs and buf[start] & 0x3F == _DATA_IN:
                        at, start = start, start + total
                        sink.data_in_received(buf, at, data)
                        continue
                    pdu = decode_pdu(buf[start : start + BHS_LENGTH],
                                     buf[start + BHS_LENGTH : start + BHS_LENGTH + ahs], data)
                    start += total
                    self._deliver(pdu, False)
                    continue
                if (avail >= head and dsl >= PLACE_MIN and buf[start] & 0x3F == _DATA_IN
                        and self.sink is not None):
                    if hd and header_digest(buf[start : start + head - hd]) != buf[
                        start + head - hd : start + head
                    ]:
                        raise DigestError("header digest mismatch", header=True)
                    dest = self.sink.placement(buf[start : start + BHS_LENGTH])
                    if dest is not None:
                        if admit is not None and not admit(buf[start : start + BHS_LENGTH]):
                            self._pause()
                            break
                        have = min(avail - head, dsl)
                        dest[:have] = buf[start + head : start + head + have]
                        bhs = bytes(buf[start : start + BHS_LENGTH])
                        start += head + have
                        self._tail = padded - dsl + dd
                        if have < dsl:
                            self._dest, self._dest_pos, self._dest_bhs = dest, have, bhs
                            break
                        self._tail_pdu = decode_pdu(bhs, b"", dest)
                        continue
                if start + total > len(buf):
                    buf[: avail] = buf[start:end]
                    start, end = 0, avail
                break
        finally:
            if start == end:
                start = end = 0
            self._start, self._end = start, end


class InitiatorStream(PduStream, asyncio.BufferedProtocol):
    """A :class:`PduStream` as an asyncio protocol: reads as the loop says data came."""

    def __init__(self, buffer: memoryview, on_lost: Callable[[InitiatorStream, str], None]) -> None:
        super().__init__(buffer)
        self._on_lost = on_lost
        self._arrived = asyncio.Event()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance(asyncio.Transport): uvloop's TCP transport is not a subclass.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failed is None:
            self.failed = f"connection lost: {exc}" if exc else "the target closed the connection"
            self.failed_kind = FailureKind.CLOSED
        self._arrived.set()
        if not self.closed.done():
            self.closed.set_result(None)
        self._on_lost(self, self.failed)

    def eof_received(self) -> bool | None:
        return False

    def _unattached(self, pdu: Pdu) -> None:
        super()._unattached(pdu)
        self._arrived.set()

    async def next_pdu(self, timeout: float) -> Pdu:
        """The next PDU in inbox mode; raises ConnectionError once the link is gone."""
        async with asyncio.timeout(timeout):
            while not self.inbox:
                if self.closed.done():
                    raise ConnectionError(self.failed or "connection closed")
                self._arrived.clear()
                await self._arrived.wait()
        return self.inbox.popleft()
