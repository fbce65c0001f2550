"""Keeps an event loop turning, not sleeping in epoll, while `earmark.busy_poll` says so.

A callback that is ready to run makes the loop poll its descriptors with a zero
timeout instead of sleeping; this one reschedules itself each turn for as long as the
rule asks. The rule decides; this only carries the clock in and the turns out.
"""

from __future__ import annotations

import asyncio
import time

from earmark.busy_poll import Poll

__all__ = ["BusyPoller"]


class BusyPoller:
    """One per event loop: the servers on it tell it each request and answer (`woke`)."""

    __slots__ = ("_loop", "_poll")

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float) -> None:
        self._loop = loop
        self._poll = Poll(window)

    @property
    def polling(self) -> bool:
        return self._poll.polling

    def woke(self) -> None:
        """A request came or an answer left: poll for the window from now."""
        if self._poll.event(time.perf_counter()):
            self._loop.call_soon(self._turn)

    def idle(self) -> None:
        """Nothing awaited now: stop polling at the next turn."""
        self._poll.idle()

    def _turn(self) -> None:
        if self._poll.turn(time.perf_counter()):
            self._loop.call_soon(self._turn)
