"""What one target connection decides outside its session, sans-I/O.

The asyncio adapter (`earmark.runtime.connection`) only moves bytes, time and
memory grants; these are the rules it asks: what a connection holds for its life
and who the deadlock detector is told frees it, when reading may go on, what a
bad PDU ends, what a failed backing I/O reports, and who waits for a `--policy
none` allocation. Each is asked at most once per event, never per PDU.
"""

from __future__ import annotations

from collections.abc import Callable

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


class ConnectionMemory:
    """What a connection holds for its life: its claim (reserved before it reads a
    byte), the receive buffer drawn from it, and until its session starts, the first
    command slot (`reserve`) that session brings."""

    __slots__ = ("_name", "_portal", "_recv", "_reservation", "_session", "first_slot")

    def __init__(self, portal: TargetPortal, name: str,
                 session: Callable[[], TargetSession | None]) -> None:
        self._portal = portal
        self._name = name
        self._session = session
        self._reservation: Reservation | None = None
        self._recv: Buffer | None = None
        self.first_slot: Reservation | None = None

    def claimed(self, res: Reservation) -> Buffer | None:
        """Hold the granted claim, tell the deadlock detector who frees what it holds,
        and split it: the receive buffer, which the framer needs as one run, and the
        first slot. No buffer when the arena is too fragmented for it: the connection
        is refused (what it holds goes with `release`)."""
        name, portal = self._name, self._portal
        res.handoff(name)
        self._reservation = res
        waits = portal.arena.waits
        waits.set_passive(name, (name,), "its receive buffer")
        session = self._session
        waits.set_passive(f"{name}/cmds", lambda: commands_freers(name, session()))
        if portal.first_slot is not None:
            self.first_slot = res.split(portal.first_slot, owner=f"{name}/slots")
        recv = res.take(TargetLevel.RECV, portal.recv_bytes)
        if len(recv.segments) != 1:
            recv.put_back()
            return None
        self._recv = recv
        return recv

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
        waits = self._portal.arena.waits
        waits.clear_passive(self._name)
        waits.clear_passive(f"{self._name}/cmds")


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
