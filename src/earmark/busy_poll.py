"""When a server keeps its event loop polling instead of sleeping (``--poll``).

At queue depth 1 every command wakes a server from sleep, and on a virtual machine
whose idle CPUs halt, a wake-up costs more than the work it wakes for (here a blocking
loopback TCP ping-pong takes about 91 us a round trip, 32 us with one side spinning).
Polling for a short window after each request or answer (as Linux's hybrid polling
does for fast disks, and its busy_poll for sockets) keeps the server awake for the
next one. It only pays while a CPU is free for it: polling on a CPU another process
needs delays that process (the peer, or the application a FUSE daemon serves). So the
window is bounded, and polling goes on only while it pays: a poll that ran out its
window with nothing coming (the answer was slower than the window, as it is when the
CPUs are short) or that finds itself preempted (a turn of the loop far longer than a
turn takes) stops polling for a while. Used by `earmark serve` and `earmark attach`;
`earmark.runtime.busy_poller` keeps the loop turning.

Sans-I/O: times in, a yes or no out.
"""

from __future__ import annotations

__all__ = ["Poll"]

PREEMPTED = 200e-6
"""A turn of the polling loop takes a few microseconds; one this long means another
process had our CPU."""
REST = 0.1
"""Seconds without polling after a poll that did not pay."""


class Poll:
    """Poll for up to ``window`` seconds after the last event."""

    __slots__ = ("_last_turn", "_rest_until", "_until", "polling", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        #: Whether a poll is under way (the adapter's loop is kept awake).
        self.polling = False
        self._until = 0.0
        self._last_turn = 0.0
        self._rest_until = 0.0

    def event(self, now: float) -> bool:
        """A request or an answer came at ``now``: whether to start polling now."""
        if now < self._rest_until:
            return False
        self._until = now + self.window
        if self.polling:
            return False
        self.polling = True
        self._last_turn = now
        return True

    def turn(self, now: float) -> bool:
        """One turn of the loop while polling: whether to go on."""
        wasted = now - self._last_turn > PREEMPTED or now >= self._until
        self._last_turn = now
        if wasted:
            self._rest_until = now + REST
        self.polling = not wasted
        return self.polling
