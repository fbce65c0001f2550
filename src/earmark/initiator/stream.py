"""One initiator connection without an event loop: the framer, the login inbox and a writer.

The reader receives into the connection's receive buffer (a WIRE buffer from
the arena, held for the connection's life) as much as the socket has, and the
framer (:mod:`earmark.iscsi.stream`) parses every complete PDU in one pass (no
task per PDU). A large Data-In segment still arriving is placed: the session
names where it belongs and the rest of it is received straight into the
caller's buffer.

A device whose receive buffers are allocated on arrival (the policies without
reservations) sets ``admit``: it is asked before each PDU is taken, and when
it cannot have the PDU's buffer at once the stream stops reading (the
transport is paused and nothing more is parsed) until the device calls
:meth:`PduStream.resume`. That stall is the receive side of the memory
deadlock, kept as real stacks have it.

Until a session is attached (login, SendTargets, logout of a discovery
session) PDUs go to an inbox queue one by one: those exchanges are strictly
request/response and rare, so the simplest shape is the right one there.

:class:`PduStream` is all of that with no event loop: it is fed from whatever
reads the socket (``get_buffer`` / ``buffer_updated``, the BufferedProtocol
calls) and writes through any object with the few transport methods it uses.
The asyncio engine runs it as a protocol (``runtime/initiator_connection.py``);
the blocking engine feeds it from ``recv_into`` itself (``runtime/blocking_socket.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Protocol

from earmark.initiator.failure import FailureKind
from earmark.iscsi.errors import ProtocolError
from earmark.iscsi.framing import serialize
from earmark.iscsi.login import LOGIN_MAX_SEGMENT
from earmark.iscsi.pdu import Pdu, WireBytes
from earmark.iscsi.stream import Framer, detached

__all__ = ["PLACE_MIN", "PduStream", "StreamSink", "Transport"]

PLACE_MIN = 16384
"""Data-In segments at least this big that are still arriving are received
straight into the caller's buffer; smaller ones are copied from the receive
buffer, which costs less than the extra reads placement would take."""

class StreamSink(Protocol):
    """Who the stream hands PDUs to in full feature phase (the device)."""

    def placement(self, bhs: memoryview) -> memoryview | None: ...

    def pdu_received(self, pdu: Pdu, placed: bool) -> None: ...

    def answer_received(self, header: memoryview, at: int, data: memoryview) -> None:
        """A Data-In not placed or a SCSI Response, its BHS at ``header[at:]``: no PDU
        object is built for it (the reply to every small read and every write)."""

    def batch_done(self) -> None: ...


class Transport(Protocol):
    """What a stream asks of its transport (asyncio's, or a blocking socket's)."""

    def writelines(self, pieces: Sequence[WireBytes]) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class PduStream(Framer):
    """The initiator's side of one connection, without an event loop."""

    def __init__(self, buffer: memoryview) -> None:
        super().__init__(buffer, self._unattached, self._protocol_error,
                         max_data_segment=LOGIN_MAX_SEGMENT, place_min=PLACE_MIN)
        self._sink: StreamSink | None = None
        #: PDUs that arrived while no session was attached (login, discovery).
        self.inbox: deque[Pdu] = deque()
        self.transport: Transport | None = None
        #: Why the connection ended, in words and as the kind recovery decides on.
        self.failed: str | None = None
        self.failed_kind: FailureKind | None = None

    @property
    def sink(self) -> StreamSink | None:
        return self._sink

    @sink.setter
    def sink(self, sink: StreamSink | None) -> None:
        """Attach the session's device: its hooks take the PDUs from the next one on."""
        self._sink = sink
        if sink is None:
            self.on_pdu, self.on_answer, self.placement = self._unattached, None, None
        else:
            self.on_pdu, self.on_answer = sink.pdu_received, sink.answer_received
            self.placement = self._placement

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
        self.stop()
        if self.transport is not None:
            self.transport.abort()

    # -------------------------------------------------------------- sending

    def write(self, pieces: list[WireBytes]) -> None:
        transport = self.transport
        if transport is not None and pieces and not transport.is_closing():
            transport.writelines(pieces)

    def send(self, pdu: Pdu) -> None:
        self.write(serialize(pdu, self.header_digest, self.data_digest))

    # -------------------------------------------------------------- receiving

    def buffer_updated(self, nbytes: int) -> None:
        try:
            if not self.received(nbytes):
                return
        except ProtocolError as exc:
            self._protocol_error(None, exc)
        if self.paused and self.transport is not None:
            self.transport.pause_reading()
        if self._sink is not None and self.failed is None:
            self._sink.batch_done()

    def resume(self) -> None:
        """What the stream stopped for is granted: parse what is buffered, read again."""
        super().resume()
        self.buffer_updated(0)  # nothing new arrived: parse what is already here
        transport = self.transport
        if not self.paused and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _protocol_error(self, header: memoryview | None, exc: ProtocolError) -> None:
        self.abort(f"protocol error from the target: {exc.reason}", FailureKind.PROTOCOL)

    def _placement(self, bhs: memoryview) -> tuple[memoryview] | None:
        assert self._sink is not None
        dest = self._sink.placement(bhs)
        return None if dest is None else (dest,)

    def _unattached(self, pdu: Pdu, placed: bool) -> None:
        self.inbox.append(detached(pdu))
