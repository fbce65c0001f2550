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
turn takes) stops polling for a while: a millisecond after one such poll, twice as
long after each next one, up to a tenth of a second, and back to a millisecond once
a poll pays (something came while it polled). One miss among thousands of hits (a
peer's hiccup, a neighbour's burst) so costs a few commands' polling, not a tenth of
a second's: measured at queue depth 1 beside a busy neighbour, a flat 0.1 s rest after
every miss left polling off for 9,665 of 11,972 commands. Where polling never pays,
it costs at most one window every tenth of a second. A server that knows when nothing
is coming but what its own client must make on a CPU (`earmark attach` once it answered
every FUSE request: the application's next one) says so (``idle``), and the poll ends
there, as no miss. Used by `earmark serve` and `earmark attach`;
`earmark.runtime.busy_poller` keeps the loop turning.

Sans-I/O: times in, a yes or no out.
"""

from __future__ import annotations

__all__ = ["Poll"]

PREEMPTED = 200e-6
"""A turn of the polling loop takes a few microseconds; one this long means another
process had our CPU."""
FIRST_REST = 0.001
"""Seconds without polling after a poll that did not pay, following one that did."""
LAST_REST = 0.1
"""The longest rest: each poll in a row that did not pay doubles it up to this."""


class Poll:
    """Poll for up to ``window`` seconds after the last event."""

    __slots__ = ("_idle", "_last_turn", "_rest", "_rest_until", "_until", "polling", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        #: Whether a poll is under way (the adapter's loop is kept awake).
        self.polling = False
        self._until = 0.0
        self._last_turn = 0.0
        self._rest = 0.0
        self._rest_until = 0.0
        self._idle = False

    def event(self, now: float) -> bool:
        """A request or an answer came at ``now``: whether to start polling now."""
        self._idle = False
        if self.polling:  # it came while polling: the poll paid
            self._until = now + self.window
            self._last_turn = now  # the loop turned to serve it
            self._rest = 0.0
            return False
        if now < self._rest_until:
            return False
        self._until = now + self.window
        self.polling = True
        self._last_turn = now
        return True

    def idle(self) -> None:
        """Nothing is awaited now: the next event is the client's to make, on a CPU
        polling could keep from it. The poll ends at the next turn, and that is no miss."""
        self._idle = self.polling

    def turn(self, now: float) -> bool:
        """One turn of the loop while polling: whether to go on."""
        if self._idle:
            self._idle = self.polling = False
            return False
        wasted = now - self._last_turn > PREEMPTED or now >= self._until
        self._last_turn = now
        if wasted:
            self._rest = min(2 * self._rest, LAST_REST) if self._rest else FIRST_REST
            self._rest_until = now + self._rest
        self.polling = not wasted
        return self.polling
