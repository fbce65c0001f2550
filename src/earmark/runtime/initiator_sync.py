"""The blocking block device: one socket, one command at a time, no event loop.

At queue depth 1 an event loop is pure overhead (an epoll wake-up, a loop turn
and a future per command): against tgtd a minimal asyncio client reached 0.81
of libiscsi's QD1 IOPS where a blocking socket loop reached 0.93 to 0.98. So,
like fio's ``psync`` beside ``libaio``, threaded code gets a device that sends
a command and blocks in ``recv`` for its answer (threads take turns: a lock),
running the asyncio engine's sans-I/O core (``earmark.initiator``: the driver,
admission, recovery, the login steps) and the :class:`PduStream` parser.

Memory, as under ``reserve``, from the device's own arena, at once
(``Admission.hold_now``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType
from typing import Unpack

from earmark.host.policy import Policy
from earmark.initiator.device import MAX_IO_BYTES, RECEIVE_BUFFER_BYTES, DeviceOptions
from earmark.initiator.driver import LOGOUT_WAIT, Driver
from earmark.initiator.errors import ConnectError, InitiatorError, SessionLostError
from earmark.initiator.failure import ConnectionFailed
from earmark.initiator.session import Command
from earmark.initiator.stream import PduStream
from earmark.initiator.url import IscsiUrl
from earmark.iscsi.pdu import Pdu
from earmark.runtime.blocking_socket import SocketTransport, read, timeval
from earmark.scsi import cdb as C

__all__ = ["SyncBlockDevice"]

_TICK = 1.0
"""Longest a blocked recv waits before the session's timers are looked at."""


class SyncBlockDevice(Driver[PduStream]):
    """A LUN of an iSCSI target as a blocking block device. Use ``with``.

    Offsets and lengths must be multiples of :attr:`block_size`.
    """

    def __init__(self, url: str | IscsiUrl, **options: Unpack[DeviceOptions]) -> None:
        """Connects, logs in and reads the capacity; the options are
        :class:`~earmark.initiator.device.DeviceBase`'s, and an ``arena`` given must be
        used by this device's callers only (an arena is single-threaded)."""
        super().__init__(url, policy=Policy.RESERVE, **options)  # a policy given: TypeError
        self.clock = time.monotonic
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        recv_bytes = RECEIVE_BUFFER_BYTES
        self.admission.start()
        try:
            self._recv = self.admission.receive_buffer_now(recv_bytes)
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
        view = memoryview(buffer).cast("B")
        cdb = self.command(offset, view, False)
        for one, part in ((cdb, view),) if cdb is not None else self.plan(offset, view, False):
            self.execute(one, read_into=part)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset``; returns once the target acknowledged all of it."""
        view = memoryview(data).cast("B")
        cdb = self.command(offset, view, True)
        for one, part in ((cdb, view),) if cdb is not None else self.plan(offset, view, True):
            self.execute(one, write_data=part)

    def flush(self) -> None:
        """SYNCHRONIZE CACHE of the whole LUN (CacheLostError: it cannot vouch for them all)."""
        covers = self.durability.acked
        self.execute(C.synchronize_cache_16())
        self.durability.flushed(covers)

    def discard(self, offset: int, length: int) -> None:
        """UNMAP the range (the target may then read it back as zeros or as before)."""
        cdb, params = self.unmap(offset, length)
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
            if self.dead is not None:
                raise self.dead
            if self.closing:
                raise SessionLostError(f"{self.url}: the device is closed")
            cmd = Command(cdb, self.url.lun if lun is None else lun, read_into, write_data)
            admission = self.admission
            claim, res = admission.hold_now(write_data is not None, cmd.length, self.name)
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
        session, stream = self.session, self.stream
        try:
            if session is None or stream is None:
                self.pending.append(cmd)  # for the next session
            else:
                session.submit(cmd, time.monotonic())
                stream.write(session.data_to_send())
        except ConnectionFailed as failure:
            self._drop(failure)
        while cmd.status is None and cmd.error is None:
            try:
                if self.session is None and not self._reconnect():
                    return
                self._receive(cmd)
            except ConnectionFailed as failure:
                self._drop(failure)

    def _receive(self, cmd: Command) -> None:
        """Read and parse until ``cmd`` has its status (or error); the session's timers
        run every tick; a dead link raises ConnectionFailed."""
        session, stream, sock = self.session, self.stream, self._sock
        assert session is not None and stream is not None and sock is not None
        while cmd.status is None and cmd.error is None:
            if not read(stream, sock):  # a tick of SO_RCVTIMEO: the session's timers
                self.timer(time.monotonic())
            if session.failure is not None:
                raise session.failure

    # ------------------------------------------------------------ connecting

    def _log_in(self) -> None:
        url = self.url
        try:
            sock = socket.create_connection((url.host, url.port), timeout=self.login_timeout)
        except OSError as exc:  # TimeoutError too
            raise ConnectError.of(url.portal, exc, self.login_timeout) from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(_TICK))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(self.timeouts.command))
        stream = PduStream(self._recv)
        stream.transport = SocketTransport(sock)
        steps = self.login_steps()
        deadline = time.monotonic() + self.login_timeout
        try:
            req: Pdu | None = steps.start()
            while not steps.done:
                if req is not None:
                    stream.send(req)
                req = steps.receive(self._next_pdu(stream, sock, deadline))
        except (TimeoutError, ConnectionFailed) as exc:
            sock.close()
            raise steps.broken(exc) from None
        except BaseException:
            sock.close()
            raise
        steps.full_feature(stream)
        self.attach(steps, stream)
        stream.sink = self
        self._sock = sock

    @staticmethod
    def _next_pdu(stream: PduStream, sock: socket.socket, deadline: float) -> Pdu:
        while not stream.inbox:
            if time.monotonic() >= deadline:
                raise TimeoutError
            read(stream, sock)
        return stream.inbox.popleft()

    def _reconnect(self) -> bool:
        """Log in again and send what waits; False: the reconnect timeout gave up."""
        backoff = self.backoff(time.monotonic())
        while backoff.may_try(time.monotonic()):
            try:
                self._log_in()
            except InitiatorError as exc:
                time.sleep(backoff.failed(exc, time.monotonic()))
                continue
            self.resume()
            return True
        self.unreachable(backoff)
        return False

    def _drop(self, failure: ConnectionFailed) -> None:
        """Forget the connection: the socket closes, unanswered commands wait or fail."""
        stream = self.stream
        self._sock = None
        self.lost(failure)
        if stream is not None:
            stream.close("dropped")

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        """Log out, close the socket, give the memory back. Idempotent.

        A command another thread has in progress finishes first (at most its
        command timeout, then the reconnect attempts its device allows)."""
        with self._lock:
            if self.closing:
                return
            stream, sock = self.stream, self._sock
            deadline = time.monotonic() + LOGOUT_WAIT
            with contextlib.suppress(ConnectionFailed):  # gone already: nothing to wait for
                if self.log_out():
                    assert stream is not None and sock is not None
                    while not self.logged_out and time.monotonic() < deadline:
                        read(stream, sock)
            if stream is not None:
                stream.close("closed by the application")
            self._sock = None
            self.shut()

    def __enter__(self) -> SyncBlockDevice:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
