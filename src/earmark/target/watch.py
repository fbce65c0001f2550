"""When the target asks the deadlock detector, and what it does with the answer; sans-I/O.

Asking costs a walk over every holder and waiter, so it is asked only once memory
has stalled (waiters, and nothing granted or returned for the watchdog's timeout).
A deadlock it names (only `--policy none` can make one) ends every connection, so
initiators see an error instead of a hang; the runtime logs it and drops them.
"""

from __future__ import annotations

from earmark.memory import Arena, DeadlockReport, Watchdog, find_deadlock


class DeadlockWatch:
    __slots__ = ("_arena", "_dog", "interval", "report")

    def __init__(self, arena: Arena, timeout: float) -> None:
        self._arena = arena
        self._dog = Watchdog(timeout)
        #: How often the runtime calls `check`: twice per timeout, and at least every 0.5 s.
        self.interval = min(0.5, timeout / 2)
        #: The last deadlock found.
        self.report: DeadlockReport | None = None

    def check(self, now: float) -> DeadlockReport | None:
        """A deadlock to end by dropping every connection, or None (live, or not stalled)."""
        arena = self._arena
        if not self._dog.stalled(now, arena.progress, arena.waiting):
            return None
        report = find_deadlock(arena)
        if report is not None:
            self.report = report
        return report
