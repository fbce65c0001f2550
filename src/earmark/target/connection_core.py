"""What one target connection decides outside its session, sans-I/O.

The asyncio adapter (`earmark.runtime.connection`) only moves bytes, time and
memory grants; these are the rules it asks: how a connection's first claim is
carved, who the deadlock detector is told frees what it holds, what a bad PDU
ends, what a failed backing I/O reports, and who waits for a `--policy none`
allocation. Each is asked at most once per event, never per PDU on the fast path.
"""

from __future__ import annotations

from collections.abc import Callable

from earmark.iscsi.errors import DigestError, ProtocolError
from earmark.memory import Buffer, Reservation
from earmark.memory.levels import TargetLevel
from earmark.memory.waits import WaitRegistry
from earmark.scsi.sense import ScsiError, SenseKey
from earmark.target.events import AllocRequest
from earmark.target.portal import TargetPortal
from earmark.target.session import TargetSession

#: What a command whose backing I/O raised or was cancelled answers: the I/O never
#: said what failed, so the target reports its own failure (INTERNAL TARGET FAILURE).
FAILED_IO_SENSE = ScsiError(SenseKey.HARDWARE_ERROR, 0x44, 0x00).sense()


def carve(portal: TargetPortal, res: Reservation,
          name: str) -> tuple[Reservation | None, Buffer | None]:
    """Split the connection's claim: its first command slot (`reserve`) and its receive
    buffer, which the framer needs as one run. No buffer when the arena is too
    fragmented for that: the connection is refused (its slot goes when it does)."""
    first = None
    if portal.first_slot is not None:
        first = res.split(portal.first_slot, owner=f"{name}/slots")
    recv = res.take(TargetLevel.RECV, portal.recv_bytes)
    if len(recv.segments) != 1:
        recv.put_back()
        return first, None
    return first, recv


def declare_holders(waits: WaitRegistry, name: str,
                    session: Callable[[], TargetSession | None]) -> None:
    """Tell the deadlock detector who frees what the connection holds: its receive
    buffer is held for its life; its commands' buffers (`--policy none`), see
    `commands_freers`."""
    waits.set_passive(name, (name,), "its receive buffer")
    waits.set_passive(f"{name}/cmds", lambda: commands_freers(name, session()))


def clear_holders(waits: WaitRegistry, name: str) -> None:
    waits.clear_passive(name)
    waits.clear_passive(f"{name}/cmds")


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
