"""What one target connection decides outside its session, sans-I/O.

The asyncio adapter (`earmark.runtime.connection`) only moves bytes, time and
memory grants; these are the rules it asks: what a connection holds for its life
and who the deadlock detector is told frees it, when reading may go on, what a
bad PDU ends, what a failed backing I/O reports, and who waits for a `--policy
none` allocation. Each is asked at most once per event, never per PDU.
"""

from __future__ import annotations

import logging
from typing import Protocol

from earmark.iscsi.errors import DigestError, ProtocolError
from earmark.memory import Buffer, Reservation
from earmark.memory.levels import TargetLevel
from earmark.scsi.sense import ScsiError, SenseKey
from earmark.target.events import AllocRequest
from earmark.target.portal import TargetPortal
from earmark.target.session import TargetSession

#: What a command whose backing I/O raised or was cancelled answers: the I/O never
#: said what failed, so the target reports its own failure (INTERNAL TARGET FAILURE).
FAILED_IO_SENSE = ScsiError(SenseKey.HARDWARE_ERROR, 0x44, 0x00).sense()

log = logging.getLogger(__name__)


class ConnectionMemory:
    """What a connection holds for its life: while it logs in, its login claim and the
    login-sized receive buffer drawn from it (reserved before it reads a byte); once
    the login is done, its session's claim, the receive buffer drawn from that, and
    until its session starts, the first command slot (`reserve`) that session brings.

    `session` is the connection's, once it has one: the deadlock detector asks it who
    frees the commands' buffers. It is set here rather than looked up on the connection,
    so that nothing the arena keeps refers back to the connection."""

    __slots__ = ("_login", "_login_recv", "_name", "_portal", "_recv", "_reservation",
                 "first_slot", "session")

    def __init__(self, portal: TargetPortal, name: str) -> None:
        self._portal = portal
        self._name = name
        self.session: TargetSession | None = None
        self._login: Reservation | None = None
        self._login_recv: Buffer | None = None
        self._reservation: Reservation | None = None
        self._recv: Buffer | None = None
        self.first_slot: Reservation | None = None

    def login_claimed(self, res: Reservation) -> Buffer | None:
        """Hold the granted login claim, tell the deadlock detector who frees what the
        connection holds, and draw the login's receive buffer (None: the arena is too
        fragmented for one run; the connection is refused, `release` gives it back)."""
        self._hold(res)
        self._login = res
        self._login_recv = _one_run(res.take(TargetLevel.RECV, self._portal.login_bytes))
        return self._login_recv

    def _hold(self, res: Reservation) -> None:
        name = self._name
        res.handoff(name)
        waits = self._portal.arena.waits
        waits.set_passive(name, (name,), "its receive buffer")
        waits.set_passive(f"{name}/cmds", lambda: commands_freers(name, self.session))

    def claimed(self, res: Reservation) -> Buffer | None:
        """The login is done and the session's claim granted: hold it and split it, the
        receive buffer (one run, or None as `login_claimed`) and the first slot. The
        login's buffer stays until `login_over`: what it holds moves first."""
        self._hold(res)
        self._reservation = res
        portal = self._portal
        if portal.first_slot is not None:
            self.first_slot = res.split(portal.first_slot, owner=f"{self._name}/slots")
        self._recv = _one_run(res.take(TargetLevel.RECV, portal.recv_bytes))
        return self._recv

    def login_over(self) -> None:
        """Give back the login's buffer and claim: the session's hold what it held."""
        if self._login_recv is not None:
            self._login_recv.put_back()
            self._login_recv = None
        if self._login is not None:
            self._login.release()
            self._login = None

    def session_slots(self) -> list[Reservation]:
        """The slots the session starting now begins with."""
        slots = [self.first_slot] if self.first_slot is not None else []
        self.first_slot = None
        return slots

    def release(self, slots: list[Reservation]) -> None:
        """The connection is gone: give back its session's `slots` and all it held."""
        if self.first_slot is not None:
            slots.append(self.first_slot)
            self.first_slot = None
        for slot in slots:
            slot.release()
        if self._recv is not None:
            self._recv.put_back()
            self._recv = None
        if self._reservation is not None:
            self._reservation.release()
            self._reservation = None
        self.login_over()
        waits = self._portal.arena.waits
        waits.clear_passive(self._name)
        waits.clear_passive(f"{self._name}/cmds")


class IoOutcome(Protocol):
    """How a backing I/O on a thread ended (an asyncio future of its sense data)."""

    def cancelled(self) -> bool: ...

    def exception(self) -> BaseException | None: ...

    def result(self) -> bytes: ...


def io_sense(name: str, outcome: IoOutcome) -> bytes:
    """What the command answers for its backing I/O: the sense `run_io` returned (b""
    on success), or `FAILED_IO_SENSE` when the I/O raised (logged) or was cancelled."""
    if outcome.cancelled():
        return FAILED_IO_SENSE
    exc = outcome.exception()
    if exc is not None:
        log.error("%s: backing I/O failed: %r", name, exc)
        return FAILED_IO_SENSE
    return outcome.result()


def _one_run(buffer: Buffer) -> Buffer | None:
    """`buffer` if it is one run of memory (a framer needs one), else None, given back."""
    if len(buffer.segments) == 1:
        return buffer
    buffer.put_back()
    return None


def commands_freers(name: str, session: TargetSession | None) -> tuple[str, ...]:
    """Who frees the commands' buffers: they go when the commands complete.

    A command waiting for Data-Out it asked for completes only through the reader,
    which delivers it (and which may itself wait for memory); any other command
    moves by itself: it waits for memory under its own name (`alloc_waiter`), or
    its backing I/O runs. Naming the reader while no command expects data would
    count a reader that has nothing left to deliver as a way out.
    """
    if session is None:
        return ()
    tasks = session.tasks.values()
    moving = tuple(f"{name}/{task.owner}" for task in tasks if not task.awaits_wire())
    if len(moving) < len(tasks):
        return (f"{name}/reader", *moving)
    return moving


def may_read(session: TargetSession | None, write_paused: bool) -> bool:
    """Read on unless the initiator reads slower than we answer (the bytes queued for
    it, outside the arena, would grow with every command read) or the session's
    unsolicited data waits for its buffer (`--policy none`)."""
    return not write_paused and (session is None or session.blocked is None)


def alloc_waiter(name: str, req: AllocRequest) -> str:
    """Who waits for `req` in the detector's eyes: the reader for unsolicited data (it
    is paused until the buffer comes), otherwise the command."""
    return f"{name}/reader" if req.blocking else f"{name}/{req.task.owner}"


def bad_pdu_closes(session: TargetSession | None, header: memoryview, exc: ProtocolError,
                   out_of_sync: bool) -> bool:
    """Reject what the session can quote; True when the connection must close: during
    login, when the stream is out of sync, or on a data digest error. Otherwise
    the PDU only failed to decode and the stream goes on."""
    if session is not None and exc.reject is not None:
        session.reject(header, exc.reject)
    return session is None or out_of_sync or isinstance(exc, DigestError)
