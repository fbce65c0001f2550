"""What the target has done, counted where it happens and read when someone asks
(`earmark serve --metrics` reads them at scrape time; nothing is pushed per command).

A LUN's counters live with the LUN, which outlives every session on it, so its figures
only grow; the portal's live with the portal. Counting a command is one list item
incremented; failures are counted only when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _per_opcode() -> list[int]:
    return [0] * 256


@dataclass(slots=True, eq=False)
class UnitCounters:
    #: SCSI commands received for the LUN, by operation code (CDB byte 0).
    commands: list[int] = field(default_factory=_per_opcode)
    #: Commands that ended with a status other than GOOD: (operation code, status).
    failed: dict[tuple[int, int], int] = field(default_factory=dict)
    #: Tasks ended by task management (ABORT TASK, ..., LUN and target resets).
    aborted: int = 0

    def failure(self, opcode: int, status: int) -> None:
        key = (opcode, status)
        self.failed[key] = self.failed.get(key, 0) + 1


@dataclass(slots=True, eq=False)
class PortalCounters:
    #: Connections closed because a NOP-In ping went unanswered.
    nop_timeouts: int = 0
    #: Logins that reinstated a session of their I_T nexus.
    reinstatements: int = 0
