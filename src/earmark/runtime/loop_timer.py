"""A connection's one timer on an asyncio loop, armed at the deadline the driver gives.

It is re-armed when it fires, and when a command is issued with a deadline
before the armed one; otherwise deadlines only move later while it waits, so
firing early and asking again is enough (one timer, not one per command).

It holds its owner's method weakly: an owner that keeps its own timer would otherwise
be a reference cycle, and a closed device (with its arena) would live until the next
full garbage collection instead of going with its last reference.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

__all__ = ["LoopTimer"]


class LoopTimer:
    __slots__ = ("_fire", "_handle", "at")

    def __init__(self, fire: Callable[[float], float | None]) -> None:
        """``fire``, a bound method, is called with the running loop's time when the
        deadline comes and returns the next one (None: none)."""
        self._fire = weakref.WeakMethod(fire)
        self._handle: asyncio.TimerHandle | None = None
        #: The armed deadline (infinity: none).
        self.at = float("inf")

    def arm(self, when: float | None) -> None:
        """Wake at ``when`` instead (None: not at all)."""
        if self._handle is not None:
            self._handle.cancel()
        if when is None:
            self._handle, self.at = None, float("inf")
        else:
            handle = asyncio.get_running_loop().call_at(when, self._fired)
            self._handle, self.at = handle, when

    def _fired(self) -> None:
        self._handle = None
        fire = self._fire()
        if fire is not None:
            self.arm(fire(asyncio.get_running_loop().time()))
