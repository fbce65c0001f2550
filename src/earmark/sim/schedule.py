"""Which ready callback the virtual-time loop runs next: a seeded choice, so a seed
explores a schedule and not only a workload.

asyncio runs ready callbacks first in, first out: one interleaving per workload.
`fifo` keeps that; `random` runs any of the first `LOOKAHEAD` ready callbacks,
uniformly; `pct` (after Burckhardt et al.'s probabilistic concurrency testing)
gives each owner of callbacks (a task, a transport) a random priority when first
seen, runs the highest-priority one among the first `LOOKAHEAD`, and at a few
seeded steps drops the running owner's priority below every other, which is
what uncovers bugs that need one task to be starved for a while. A callback
passed over `PATIENCE` times in a row runs next, so nothing starves for ever
(a task polling in a loop would otherwise spin). Every choice comes from the
seed: the same seed runs the same schedule, in any process.
"""

from __future__ import annotations

import enum
import random
import weakref
from collections import deque
from typing import Any

__all__ = ["LOOKAHEAD", "PATIENCE", "ReadyQueue", "Schedule"]

#: How far into the ready queue a choice reaches (a choice costs that much at most).
LOOKAHEAD = 8
#: How many choices the head of the queue may lose in a row.
PATIENCE = 32


class Schedule(enum.Enum):
    FIFO = "fifo"
    RANDOM = "random"
    PCT = "pct"


class ReadyQueue(deque[Any]):
    """The loop's ready queue (asyncio's ``_ready``); `popleft` makes the seeded choice."""

    def __init__(self, schedule: Schedule = Schedule.FIFO, seed: int = 0,
                 change_points: int = 3, horizon: int = 200_000) -> None:
        super().__init__()
        self.schedule = schedule
        self._rng = random.Random(seed)
        #: Each owner's priority while it lives, by identity (its weak reference's callback
        #: forgets it): a WeakKeyDictionary made a weak reference at every look-up.
        self._priority: dict[int, tuple[weakref.ref[object], float]] = {}
        #: The priority of each queued handle `pct` has looked at, by id, until it leaves
        #: the queue or a priority changes: the first LOOKAHEAD are looked at every step.
        self._seen: dict[int, float] = {}
        self._changes = sorted(self._rng.randrange(horizon) for _ in range(change_points))
        self._lowest = 0.0
        self._steps = 0
        self._passed = 0
        if schedule is Schedule.FIFO:
            self.popleft = super().popleft  # type: ignore[method-assign]

    def popleft(self) -> Any:
        n = len(self)
        if n <= 1 or self._passed >= PATIENCE:
            self._passed = 0
            i = 0
        else:
            if n > LOOKAHEAD:
                n = LOOKAHEAD
            i = self._rng.randrange(n) if self.schedule is Schedule.RANDOM else self._highest(n)
            self._passed = self._passed + 1 if i else 0
        if i:
            handle = self[i]
            del self[i]
        else:
            handle = super().popleft()
        if self._seen:  # it leaves: its id may be another handle's next
            self._seen.pop(id(handle), None)
        return handle

    def _highest(self, n: int) -> int:
        self._steps += 1
        best, best_at = -1.0, 0
        seen = self._seen
        for i in range(n):
            handle = self[i]
            p = seen.get(id(handle))
            if p is None or handle._cancelled:  # cancelled, it has no owner any more
                p = seen[id(handle)] = self._priority_of(handle)
            if p > best:
                best, best_at = p, i
        if self._changes and self._steps >= self._changes[0]:
            self._changes.pop(0)
            owner = _owner(self[best_at])
            if owner is not None:
                self._lowest -= 1.0
                self._prioritise(owner, self._lowest)
                seen.clear()  # that owner's handles now have another priority
        return best_at

    def _priority_of(self, handle: Any) -> float:
        owner = _owner(handle)
        if owner is None:
            return 0.5
        known = self._priority.get(id(owner))
        return self._prioritise(owner, self._rng.random()) if known is None else known[1]

    def _prioritise(self, owner: object, priority: float) -> float:
        key = id(owner)
        known = self._priority.get(key)
        ref = weakref.ref(owner, lambda _: self._priority.pop(key, None)) if known is None \
            else known[0]
        self._priority[key] = (ref, priority)
        return priority


def _owner(handle: Any) -> object | None:
    """Whose callback a handle runs (a task's step, a transport's method), if it is
    hashable (a set's `discard` is no one's) and can be weakly referred to."""
    owner: object | None = getattr(getattr(handle, "_callback", None), "__self__", None)
    if owner is None or type(owner).__hash__ is None or not type(owner).__weakrefoffset__:
        return None
    return owner
