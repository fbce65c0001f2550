"""The blocking block device: one socket, one command at a time, no event loop.

For a program that waits for each I/O before the next (queue depth 1) an event
loop is pure overhead: an epoll wake-up, a loop turn to resume the waiting task
and a future per command, on top of the protocol itself. Measured on this
project's 2-core test machine against tgtd, a minimal asyncio client reached
0.81 of libiscsi's QD1 IOPS where a blocking socket loop reached 0.93 to 0.98.
So, like fio's ``psync`` engine beside ``libaio``, threaded code gets a device
that sends a command and blocks in ``recv`` for its answer.

It runs the same sans-I/O core as the asyncio engine (``earmark.initiator``: the
login steps, the session, admission and recovery, and the :class:`PduStream`
parser); this module only moves bytes and keeps time.

Memory, as under ``reserve``: the device has an arena of its own. The
connection's receive buffer (WIRE) is held for its life, and a command is
issued only once its claim (TASK and WIRE: descriptors, Data-Out headers and
every receive buffer it can cause) is reserved, at once (``Arena.reserve_now``):
a thread with no event loop has nothing to wait on, so a claim that does not fit
is an error in words, never a hang. A finished command's reservation is kept
for the next command of its size, and given back whenever anyone is about to
wait (the arena's shrinker) and at close.

Threads may share a device; their commands take turns (a lock). For commands
in flight together, use the asyncio device (``earmark.open``).

Recovery is the asyncio engine's, at ERL 0: on a lost or timed-out connection,
log in again with the same ISID and TSIH 0 and send the unanswered command
again; an acknowledged write is never sent twice.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType

from earmark.initiator.device import (
    DEFAULT_INITIATOR_NAME,
    MAX_IO_BYTES,
    WANTS,
    DeviceBase,
    check_extent,
    chunks,
    unmap_command,
)
from earmark.initiator.errors import ConnectError, InitiatorError, SessionLostError
from earmark.initiator.failure import ConnectionFailed, FailureKind
from earmark.initiator.session import Command, InitiatorSession, Timeouts
from earmark.initiator.url import IscsiUrl
from earmark.iscsi.pdu import Buffer, LoginRequest, Pdu
from earmark.iscsi.stream import receive_buffer_bytes
from earmark.memory import Arena, HostLevel
from earmark.memory.arena import format_bytes
from earmark.runtime.initiator_connection import RECEIVE_PDUS, PduStream
from earmark.scsi import cdb as C

__all__ = ["SyncBlockDevice"]

_TICK = 1.0
"""Longest a blocked recv waits before the session's timers are looked at."""
_IOV_MAX = 1024
_LOGOUT_WAIT = 5.0


def _read(stream: PduStream, sock: socket.socket) -> bool:
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


class _SocketTransport:
    """The transport calls a :class:`PduStream` makes, on a blocking socket."""

    __slots__ = ("closing", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closing = False

    def writelines(self, pieces: Sequence[Buffer]) -> None:
        """Send every piece, in order, however many send calls that takes."""
        sock = self.sock
        try:
            if len(pieces) == 1:  # a command without data: one header, one send
                piece = pieces[0]
                sent = sock.send(piece)
                if sent == len(piece):
                    return
                pending: list[Buffer] = [memoryview(piece)[sent:]]
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

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:  # the device reads only when it waits for an answer
        pass

    def resume_reading(self) -> None:
        pass


class SyncBlockDevice(DeviceBase):
    """A LUN of an iSCSI target as a blocking block device. Use ``with``.

    Offsets and lengths must be multiples of :attr:`block_size`.
    """

    def __init__(
        self,
        url: str | IscsiUrl,
        *,
        arena: Arena | None = None,
        initiator_name: str = DEFAULT_INITIATOR_NAME,
        timeouts: Timeouts | None = None,
        login_timeout: float = 10.0,
        reconnect_timeout: float = 60.0,
        max_attempts: int = 4,
        environ: Mapping[str, str] | None = None,
        digests: bool = False,
    ) -> None:
        """Connects, logs in and reads the capacity; ``arena`` must be used by this
        device's callers only (an arena is single-threaded)."""
        super().__init__(url, arena=arena, initiator_name=initiator_name, timeouts=timeouts,
                         login_timeout=login_timeout, reconnect_timeout=reconnect_timeout,
                         max_attempts=max_attempts, environ=environ, digests=digests)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._stream: PduStream | None = None
        self._session: InitiatorSession | None = None
        self._dead: InitiatorError | None = None
        self._closed = False
        #: Why the last connection was lost.
        self._failure: ConnectionFailed | None = None
        recv_bytes = receive_buffer_bytes(int(WANTS["MaxRecvDataSegmentLength"]), RECEIVE_PDUS)
        conn_res = self.arena.reserve_now({HostLevel.WIRE: recv_bytes},
                                          owner=f"{self.name}/receive-buffer")
        if conn_res is None:
            raise InitiatorError(f"the device's arena has no room for a connection's "
                                 f"{format_bytes(recv_bytes)} receive buffer: give it a larger one")
        self._conn_res = conn_res
        self._recv = conn_res.take(HostLevel.WIRE, recv_bytes)
        self.admission.start()
        try:
            if len(self._recv.segments) != 1:
                raise InitiatorError("the arena is too fragmented for a connection's receive "
                                     "buffer: give the device a larger arena")
            self._log_in()
            data = memoryview(bytearray(32))
            self.execute(C.read_capacity_16(32), read_into=data)
            self._geometry_from(data)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ block I/O

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def readinto(self, offset: int, buffer: bytearray | memoryview) -> None:
        """Read ``len(buffer)`` bytes at ``offset``; Data-In lands in ``buffer`` itself."""
        self._transfer(offset, memoryview(buffer).cast("B"), False)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset``; returns once the target acknowledged all of it."""
        self._transfer(offset, memoryview(data).cast("B"), True)

    def _transfer(self, offset: int, view: memoryview, write: bool) -> None:
        n = len(view)
        bs = self._block_size
        if offset % bs or n % bs or offset < 0 or offset + n > self._blocks * bs:
            check_extent(offset, n, bs, self._blocks * bs)  # raises, in words
        for at, part in ((0, view),) if n <= MAX_IO_BYTES else chunks(view):
            if write:
                self.execute(C.write_16((offset + at) // bs, len(part) // bs), write_data=part)
            else:
                self.execute(C.read_16((offset + at) // bs, len(part) // bs), read_into=part)

    def flush(self) -> None:
        """SYNCHRONIZE CACHE of the whole LUN."""
        self.execute(C.synchronize_cache_16())

    def discard(self, offset: int, length: int) -> None:
        """UNMAP the range (the target may then read it back as zeros or as before)."""
        bs = self._block_size
        check_extent(offset, length, bs, self._blocks * bs)
        cdb, params = unmap_command(offset, length, bs)
        self.execute(cdb, write_data=params)

    def execute(
        self,
        cdb: bytes,
        *,
        read_into: memoryview | None = None,
        write_data: memoryview | None = None,
        lun: int | None = None,
    ) -> Command:
        """Run one SCSI command; raises ScsiError (CHECK CONDITION) or an InitiatorError."""
        if write_data is not None and len(write_data) > MAX_IO_BYTES:
            raise ValueError(f"one command moves at most {MAX_IO_BYTES} B; use write()")
        with self._lock:
            if self._dead is not None:
                raise self._dead
            if self._closed:
                raise SessionLostError(f"{self.url}: the device is closed")
            cmd = Command(cdb, self.url.lun if lun is None else lun, read_into, write_data)
            admission = self.admission
            claim = admission.claim(write_data is not None, cmd.length)[0]
            res = (admission.take(claim, self.name)
                   or admission.reserve_now(claim, self.name, cmd.length))
            try:
                self._run(cmd)
            finally:
                admission.give_back(claim, res)
        if cmd.error is not None:
            raise cmd.error
        return cmd

    # ------------------------------------------------------------ the wire

    def _run(self, cmd: Command) -> None:
        """Issue ``cmd`` and read until it is answered, reconnecting as often as allowed."""
        while True:
            session, stream = self._session, self._stream
            if session is None or stream is None:
                self._reconnect()
                self.reconnected((cmd,))
                continue
            try:
                session.submit(cmd, time.monotonic())
                stream.write(session.data_to_send())
                self._receive(session, cmd)
                return
            except ConnectionFailed as lost:
                self._failure = failure = lost
            self._drop()
            error = self.give_up(cmd, failure)
            if error is not None:
                cmd.error = error
                return

    def _receive(self, session: InitiatorSession, cmd: Command) -> None:
        """Read and parse until ``cmd`` has its status (or error); the session's timers
        run every tick; a dead link raises ConnectionFailed."""
        stream, sock = self._stream, self._sock
        assert stream is not None and sock is not None
        while cmd.status is None and cmd.error is None:
            if not _read(stream, sock):  # a tick of SO_RCVTIMEO: the session's timers
                session.handle_timer(time.monotonic())
                stream.write(session.data_to_send())
            if session.failure is not None:
                raise session.failure

    # StreamSink: the parser hands PDUs here while a session is attached.

    def placement(self, bhs: memoryview) -> memoryview | None:
        session = self._session
        return session.placement(bhs) if session is not None else None

    def pdu_received(self, pdu: Pdu, placed: bool) -> None:
        session = self._session
        assert session is not None
        session.receive(pdu, time.monotonic(), placed)

    def data_in_received(self, header: memoryview, at: int, data: memoryview) -> None:
        session = self._session
        assert session is not None
        session.data_in(header, at, data, time.monotonic())

    def batch_done(self) -> None:
        session, stream = self._session, self._stream
        if session is None or stream is None:
            return
        if session.completed:
            for cmd in session.take_completed():
                if cmd.error is not None and self.send_again(cmd):
                    session.submit(cmd, time.monotonic())
        stream.write(session.data_to_send())

    # ------------------------------------------------------------ connecting

    def _log_in(self) -> None:
        url = self.url
        try:
            sock = socket.create_connection((url.host, url.port), timeout=self.login_timeout)
        except TimeoutError:
            raise ConnectError(f"cannot reach {url.portal}: timed out after "
                               f"{self.login_timeout:g} s") from None
        except OSError as exc:
            raise ConnectError(f"cannot reach {url.portal}: {exc.strerror or exc}") from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tick = struct.pack("ll", int(_TICK), int(_TICK % 1 * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tick)
        timeout = self.timeouts.command
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", int(timeout), int(timeout % 1 * 1e6)))
        stream = PduStream(self._recv.view)
        stream.transport = _SocketTransport(sock)
        steps = self.login_steps()
        deadline = time.monotonic() + self.login_timeout
        try:
            req: LoginRequest | None = steps.start()
            while req is not None:
                stream.send(req)
                req = steps.receive(self._next_pdu(stream, sock, deadline))
        except (TimeoutError, ConnectionFailed) as exc:
            sock.close()
            raise steps.broken(exc) from None
        except BaseException:
            sock.close()
            raise
        params = steps.login.params
        self.admission.negotiated(params)
        stream.set_full_feature(params.initiator_mrdsl, params.header_digest, params.data_digest)
        self._session = steps.session(time.monotonic(), self.timeouts)
        stream.sink = self
        self._stream, self._sock = stream, sock

    @staticmethod
    def _next_pdu(stream: PduStream, sock: socket.socket, deadline: float) -> Pdu:
        while not stream.inbox:
            if time.monotonic() >= deadline:
                raise TimeoutError
            _read(stream, sock)
        return stream.inbox.popleft()

    def _reconnect(self) -> None:
        """Log in again after ``_failure``, until the reconnect timeout gives up."""
        failure = self._failure
        assert failure is not None
        backoff = self.backoff(time.monotonic())
        while backoff.may_try(time.monotonic()):
            try:
                self._log_in()
                return
            except InitiatorError as exc:
                time.sleep(backoff.failed(exc, time.monotonic()))
        self._dead = backoff.gave_up(str(self.url), failure)
        raise self._dead

    def _drop(self) -> None:
        """Forget the connection: the socket closes, unanswered commands are abandoned."""
        session, stream = self._session, self._stream
        self._session = self._stream = None
        self._sock = None
        if session is not None:
            session.abandon()
        if stream is not None:
            stream.close("dropped")

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        """Log out, close the socket, give the memory back. Idempotent.

        A command another thread has in progress finishes first (at most its
        command timeout, then the reconnect attempts its device allows)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            session = self._session
            if session is not None and self._stream is not None:
                session.logout()
                try:
                    self._stream.write(session.data_to_send())
                    self._await_logout(session)
                except ConnectionFailed:
                    pass
            self._drop()
            self.admission.stop()
            self._recv.free()
            self._conn_res.release()

    def _await_logout(self, session: InitiatorSession) -> None:
        stream, sock = self._stream, self._sock
        assert stream is not None and sock is not None
        deadline = time.monotonic() + _LOGOUT_WAIT
        with contextlib.suppress(ConnectionFailed):  # gone already: nothing more to wait for
            while session.logout_response is None and time.monotonic() < deadline:
                _read(stream, sock)

    def __enter__(self) -> SyncBlockDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
