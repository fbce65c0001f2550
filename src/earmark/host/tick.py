"""The flusher's wake-up a while after each wait begins, on one timer that outlives waits.

The flusher waits every few writes and is nearly always woken by a kick long before
its timeout. A timer set and cancelled per wait left the loop's timer heap full of
cancelled ones (every push and pop of every other timer compared against them);
this one stays set: when it comes due early (the wait it was set for is over) it
moves itself to the current wait's deadline, and it fires only at that deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Tick:
    __slots__ = ("_at", "_timer", "_wake")

    def __init__(self, wake: Callable[[], object]) -> None:
        self._wake = wake
        self._at: float | None = None  # the current wait's deadline; None: no wait
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        """Call `wake` at `at` (no earlier than any deadline armed before) unless
        `disarm` comes first."""
        self._at = at
        if self._timer is None:
            self._timer = loop.call_at(at, self._due, loop, at)

    def disarm(self) -> None:
        self._at = None

    def cancel(self) -> None:
        """No more waits: the timer goes too."""
        self._at = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        self._timer = None
        if self._at is None:
            return
        if at == self._at:
            self._wake()
        else:  # set for an earlier wait: now for this one's deadline
            self._timer = loop.call_at(self._at, self._due, loop, self._at)
