"""The memory core: one bounded arena, leveled all-or-nothing reservations, deadlock detection.

No I/O and no clocks of its own: waits are asyncio futures on whatever loop runs
them (the real one or the simulator's virtual-time loop).
"""

from earmark.memory.allocation import Allocation, Buffer, Charge
from earmark.memory.arena import Arena, format_bytes
from earmark.memory.detector import DeadlockReport, Watchdog, find_deadlock
from earmark.memory.errors import (
    ArenaError,
    ClaimTooLargeError,
    LevelOrderError,
    OverdrawError,
    ReleaseError,
    ReservationTimeoutError,
)
from earmark.memory.levels import PAGE_BYTES, HostLevel, TargetLevel
from earmark.memory.reservation import NoReservationError, Reservation, current_reservation
from earmark.memory.threads import ThreadArena
from earmark.memory.validator import check_level_order
from earmark.memory.waits import Wait, WaitKind, WaitRegistry

__all__ = [
    "PAGE_BYTES",
    "Allocation",
    "Arena",
    "ArenaError",
    "Buffer",
    "Charge",
    "ClaimTooLargeError",
    "DeadlockReport",
    "HostLevel",
    "LevelOrderError",
    "NoReservationError",
    "OverdrawError",
    "ReleaseError",
    "Reservation",
    "ReservationTimeoutError",
    "TargetLevel",
    "ThreadArena",
    "Wait",
    "WaitKind",
    "WaitRegistry",
    "Watchdog",
    "check_level_order",
    "current_reservation",
    "find_deadlock",
    "format_bytes",
]
