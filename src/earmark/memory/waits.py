"""The wait registry: every wait in the stack says who waits, for what, and who can end it.

A deadlock is a property of the whole system, not of one wait, so waits are
recorded where the detector can see them all at once. Memory waits are the
arena's own queues (`Arena.memory_waits`); layers above register the others (a
page's writeback, a response from the peer) here with `waiting()`, or, when
they wait far more often than anyone looks (a command per I/O), name a source
that lists their current waits when asked (`set_source`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum


class WaitKind(Enum):
    #: For arena bytes; ended by anyone who frees memory.
    MEMORY = "memory"
    #: For named agents to make progress (a flusher, a session's reader).
    AGENT = "agent"
    #: For something outside this process (the peer's answer); assumed to come.
    EXTERNAL = "external"


@dataclass(slots=True)
class Wait:
    waiter: str
    kind: WaitKind
    #: In words, e.g. "4 KiB at PAGE" or "writeback of page 17".
    what: str
    #: For AGENT waits: the agents whose progress ends this wait.
    wakers: tuple[str, ...] = ()
    #: What the waiter holds, in the words of its layer (e.g. "12 dirty pages").
    holds: str = ""
    since: float = 0.0
    #: For MEMORY waits: the bytes asked for.
    need: int = 0


@dataclass(slots=True, frozen=True)
class PassiveHolder:
    """Memory held by something that cannot act (the dirty part of a page cache).

    Who can free it changes from moment to moment (which writebacks are in
    flight), so it is asked when the detector looks, not told in advance.
    """

    owner: str
    freers: Callable[[], tuple[str, ...]]
    holds: str = ""

    @property
    def freed_by(self) -> tuple[str, ...]:
        return self.freers()


class _Waiting:
    """`WaitRegistry.waiting`'s context: a plain class, cheaper than a generator-based
    context manager on a page cache's every wait."""

    __slots__ = ("_registry", "_token", "_wait")

    def __init__(self, registry: WaitRegistry, wait: Wait) -> None:
        self._registry = registry
        self._wait = wait

    def __enter__(self) -> Wait:
        self._token = self._registry.register(self._wait)
        return self._wait

    def __exit__(self, *_: object) -> None:
        self._registry.unregister(self._token)


class WaitRegistry:
    """Current waits and passive holders; no clocks of its own (callers pass `now`)."""

    __slots__ = ("_counter", "_passive", "_sources", "_waits")

    def __init__(self) -> None:
        self._waits: dict[int, Wait] = {}
        self._passive: dict[str, PassiveHolder] = {}
        self._sources: dict[str, Callable[[], Iterable[Wait]]] = {}
        self._counter = itertools.count()

    def register(self, wait: Wait) -> int:
        token = next(self._counter)
        self._waits[token] = wait
        return token

    def unregister(self, token: int) -> None:
        self._waits.pop(token, None)

    def waiting(
        self,
        waiter: str,
        what: str,
        *,
        wakers: tuple[str, ...] = (),
        holds: str = "",
        now: float = 0.0,
    ) -> _Waiting:
        """Register a wait for the enclosed `await`: AGENT if `wakers` are named, else EXTERNAL."""
        kind = WaitKind.AGENT if wakers else WaitKind.EXTERNAL
        return _Waiting(self, Wait(waiter, kind, what, wakers, holds, now))

    def set_passive(
        self,
        owner: str,
        freed_by: tuple[str, ...] | Callable[[], tuple[str, ...]],
        holds: str = "",
    ) -> None:
        """Declare that what `owner` holds is freed only through the progress of `freed_by`."""
        freers = freed_by if callable(freed_by) else (lambda: freed_by)
        self._passive[owner] = PassiveHolder(owner, freers, holds)

    def clear_passive(self, owner: str) -> None:
        self._passive.pop(owner, None)

    def set_source(self, name: str, source: Callable[[], Iterable[Wait]]) -> None:
        """``source()`` lists the current waits of one agent family when the registry is read.

        For waits that begin and end on every I/O (a command waiting for its
        target's answer): registering each would cost every command, while the
        detector, which alone reads them, runs rarely. A source's waits are listed
        after the registered ones, so a wait registered around its call comes first.
        """
        self._sources[name] = source

    def clear_source(self, name: str) -> None:
        self._sources.pop(name, None)

    def waits(self) -> list[Wait]:
        waits = list(self._waits.values())
        for source in self._sources.values():
            waits.extend(source())
        return waits

    def passive(self) -> dict[str, PassiveHolder]:
        return dict(self._passive)
