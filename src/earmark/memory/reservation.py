"""A granted reservation: memory set aside for one unit of work, drawn on without waiting.

The reservation is the unit of the `reserve` discipline: whoever holds one can
finish its work without ever waiting for memory, because every byte it will
draw (at its own level and every deeper one) was granted at once, before it
started. It travels with the work: split off for a deeper layer or another
task, handed to another owner, or made "current" in a context so deeper layers
draw on it without it being passed by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING

from earmark.memory.errors import ArenaError

if TYPE_CHECKING:
    from earmark.memory.allocation import Buffer, Charge
    from earmark.memory.arena import Arena
    from earmark.memory.claim import Claim

_CURRENT: ContextVar[Reservation | None] = ContextVar("earmark_reservation", default=None)


class NoReservationError(ArenaError):
    """A deeper layer asked for the current reservation where none was handed down."""


class _Active:
    """`Reservation.active`'s context: a plain class, since a generator-based context
    manager costs several times as much and every writeback and command enters one."""

    __slots__ = ("_res", "_token")

    def __init__(self, res: Reservation) -> None:
        self._res = res

    def __enter__(self) -> Reservation:
        self._token = _CURRENT.set(self._res)
        return self._res

    def __exit__(self, *_: object) -> None:
        _CURRENT.reset(self._token)


def current_reservation() -> Reservation:
    """The reservation the calling context works under; deeper layers draw only on it."""
    res = _CURRENT.get()
    if res is None:
        raise NoReservationError(
            "no reservation is active here: under `reserve` a deeper layer draws only on "
            "memory handed down to it (use `with reservation.active():`)"
        )
    return res


#: The reservation the calling context works under, or None: for a layer that draws
#: differently when the work arrived with no reservation at all. The context variable's
#: own getter, not a function around it: every draw of every command asks.
handed_down: Callable[[], Reservation | None] = _CURRENT.get


class Reservation:
    """Bytes per level promised by the arena to one owner; `budget` is what is left to draw."""

    __slots__ = ("arena", "budget", "held", "held_total", "left", "owner", "released",
                 "revolving")

    def __init__(self, arena: Arena, owner: str, budget: list[int], left: int) -> None:
        self.arena = arena
        self.owner = owner
        #: Untaken bytes per level: promised, not yet drawn; and their sum.
        self.budget = budget
        self.left = left
        #: Bytes per level drawn and not yet returned, and their sum.
        self.held = [0] * len(budget)
        self.held_total = 0
        self.released = False
        #: What is drawn comes back to be drawn again when it is freed, not to the arena:
        #: for work that repeats for as long as the reservation is held (a writable
        #: mapping's writebacks, one per msync).
        self.revolving = False

    def take(self, level: int, nbytes: int) -> Buffer:
        """A real arena buffer of `nbytes` at `level`; never waits, raises if over budget."""
        return self.arena._draw_buffer(self, level, nbytes)

    def charge(self, level: int, nbytes: int) -> Charge:
        """Account a descriptor's nominal size at `level`; never waits."""
        return self.arena._draw_charge(self, level, nbytes)

    def release(self, claims: Claim | Mapping[int, int] | None = None) -> None:
        """Give untaken bytes back to the arena: the given amounts, or all that is left."""
        self.arena._release_budget(self, claims)

    def split(self, claims: Claim | Mapping[int, int], owner: str) -> Reservation:
        """Move part of what is left to a new reservation for another owner (on-behalf-of)."""
        return self.arena._split(self, claims, owner)

    def transfer(self, claims: Claim | Mapping[int, int], to: Reservation) -> None:
        """Move part of what is left into `to` (split and absorbed at once: a page's
        share of the request it joins, moved into the books of every such share)."""
        self.arena._transfer(self, claims, to)

    def absorb(self, other: Reservation) -> None:
        """Take over all that `other` has left (merged work: one request for many pages)."""
        self.arena._absorb(self, other)

    def rejoin(self, source: Reservation) -> None:
        """Give all that is left back where this was split off: to `source` when it
        revolves (as a draw on it comes back to it), else to the arena (as a draw on
        it, freed, would)."""
        if source.revolving and not source.released:
            self.arena._absorb(source, self)
        else:
            self.arena._release_budget(self, None)

    def handoff(self, owner: str) -> None:
        """Make `owner` the holder: the work (and what it holds) changed hands."""
        self.owner = owner

    def total(self) -> int:
        """Bytes this reservation keeps from the arena: left to draw plus drawn."""
        return self.left + self.held_total

    def active(self) -> _Active:
        """Make this the current reservation for the enclosed code (and tasks it starts)."""
        return _Active(self)

    def __repr__(self) -> str:
        names = self.arena.levels
        parts = ", ".join(
            f"{names(lvl).name}={self.budget[lvl]}+{self.held[lvl]}"
            for lvl in range(len(self.budget))
            if self.budget[lvl] or self.held[lvl]
        )
        state = " released" if self.released else ""
        return f"<Reservation {self.owner}{state} left+drawn: {parts or 'nothing'}>"
