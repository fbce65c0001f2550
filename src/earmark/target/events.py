"""What a target session asks of its runtime: backing I/O, memory, closing the connection.

The session is sans-I/O: it never touches the backing store, the arena's waiting
side or the socket. It says what it needs with these small objects; the runtime
does it and reports back (`io_done`, `allocated`), so the same session runs on
asyncio, on the simulator and under tests that play the runtime by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from earmark.scsi.plans import Plan
from earmark.target.unit import LogicalUnit

if TYPE_CHECKING:
    from earmark.target.task import Task


@dataclass(slots=True, eq=False)
class IoRequest:
    """Run part of `plan` on the unit's backing store, with `views` as the data buffer.

    `offset` is where `views` start within the command's transfer (a window of a
    burst-sized buffer that is reused); `last` says it is the plan's final window,
    where a FUA write syncs. The runtime answers with `session.io_done(self, sense)`.
    `units` are the session's units by LUN, for a CopyPlan, whose segments name them;
    its `views` are the whole command buffer, reused chunk after chunk.
    """

    task: Task
    unit: LogicalUnit
    plan: Plan
    offset: int
    views: list[memoryview]
    last: bool
    units: Mapping[int, LogicalUnit] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class AllocRequest:
    """`--policy none` only: allocate `nbytes` at BUFFER for `task`, waiting if need be.

    `blocking` means the connection's reader must stop until it is granted (the
    command's unsolicited data has to land somewhere), as a target that allocates
    on its receive path does. Answered with `session.allocated(self, buffer)`.
    """

    task: Task
    start: int
    nbytes: int
    blocking: bool


@dataclass(slots=True, frozen=True)
class CloseConnection:
    """Send what is queued, then close; `reason` is the log line saying why."""

    reason: str
    error: bool


Event = IoRequest | AllocRequest | CloseConnection
