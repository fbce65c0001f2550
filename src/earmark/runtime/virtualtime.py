"""A virtual-time asyncio loop: the simulator's clock, for the same stack that runs on TCP.

Timers fire in order, instantly: when nothing is ready, the loop jumps its clock
to the next timer instead of sleeping. asyncio runs ready callbacks in FIFO
order, so a run with the same inputs (and seeds) is the same run every time —
a deadlock found once is found again, in milliseconds rather than minutes.
Only in-process work may run on it: a real socket would never become ready.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class StalledError(RuntimeError):
    """Nothing is ready and no timer is set: the simulated system can never move again."""


class _JumpingSelector(selectors.DefaultSelector):
    """Instead of blocking for `timeout`, advance the loop's clock by it."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(
        self, timeout: float | None = None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0 or self.loop is None:
            return ready
        if timeout is None:
            raise StalledError("no task can run and no timer is set: the simulation is stuck")
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """asyncio.run on virtual time."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
