"""A blocking socket as the transport of a :class:`PduStream`, and the one read a
blocking engine does: what the socket has, parsed, or a tick of nothing.

Every failure leaves here as :class:`ConnectionFailed` with its kind: a send
that SO_SNDTIMEO ended is a target that stopped reading (STALLED), anything
else a lost connection (CLOSED).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

from earmark.initiator.failure import ConnectionFailed, FailureKind
from earmark.initiator.stream import PduStream
from earmark.iscsi.pdu import WireBytes

__all__ = ["SocketTransport", "read", "timeval"]

_IOV_MAX = 1024


def timeval(seconds: float) -> bytes:
    """``seconds`` as the struct timeval SO_RCVTIMEO and SO_SNDTIMEO take."""
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))


def read(stream: PduStream, sock: socket.socket) -> bool:
    """Receive what the socket has and parse it; False when a tick of SO_RCVTIMEO passed
    with nothing. A closed, reset or protocol-breaking link raises ConnectionFailed."""
    try:
        n = sock.recv_into(stream.get_buffer(-1))
    except BlockingIOError:
        return False
    except OSError as exc:
        raise ConnectionFailed(FailureKind.CLOSED,
                               f"connection lost: {exc.strerror or exc}") from None
    if n == 0:
        raise ConnectionFailed(FailureKind.CLOSED, "the target closed the connection")
    stream.buffer_updated(n)
    if stream.failed is not None:
        raise ConnectionFailed(stream.failed_kind or FailureKind.CLOSED, stream.failed)
    return True


class SocketTransport:
    """The transport calls a :class:`PduStream` makes, on a blocking socket."""

    __slots__ = ("closing", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closing = False

    def writelines(self, pieces: Sequence[WireBytes]) -> None:
        """Send every piece, in order, however many send calls that takes."""
        sock = self.sock
        try:
            if len(pieces) == 1:  # a command without data: one header, one send
                piece = pieces[0]
                sent = sock.send(piece)
                if sent == len(piece):
                    return
                pending: list[WireBytes] = [memoryview(piece)[sent:]]
            else:
                pending = list(pieces)
            at = 0
            while at < len(pending):
                if at + 1 == len(pending):
                    sent = sock.send(pending[at])
                else:
                    sent = sock.sendmsg(pending[at : at + _IOV_MAX])
                while sent:
                    n = len(pending[at])
                    if sent >= n:
                        sent -= n
                        at += 1
                    else:
                        pending[at] = memoryview(pending[at])[sent:]
                        sent = 0
        except BlockingIOError:  # SO_SNDTIMEO ran out: the target reads nothing
            raise ConnectionFailed(FailureKind.STALLED,
                                   "the target stopped reading what we send") from None
        except OSError as exc:
            raise ConnectionFailed(FailureKind.CLOSED,
                                   f"connection lost: {exc.strerror or exc}") from None

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.sock.close()

    abort = close  # nothing is buffered to flush

    def pause_reading(self) -> None:  # the device reads only when it waits for an answer
        pass

    def resume_reading(self) -> None:
        pass
