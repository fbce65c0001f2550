"""The deadlock detector: names the cycle instead of letting the system hang.

It reasons about liveness, not about one wait: an agent can progress if it is
not waiting, if it waits for something outside the process (the peer), if it
waits for an agent that can progress, or if it waits for memory while some
agent that can progress holds memory it will return. Whatever is left waiting
for memory after that is deadlocked, and the agents left with it form the cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from earmark.memory.arena import Arena, format_bytes
from earmark.memory.waits import Wait, WaitKind

#: How many agents the one-line cycle names before it summarises the rest.
_CYCLE_NAMES = 4


@dataclass(frozen=True, slots=True)
class DeadlockReport:
    #: One line per stuck agent: what it holds and what it waits for.
    stuck: tuple[str, ...]
    #: The cycle in one line, for tables and logs.
    cycle: str
    committed: int
    capacity: int

    def __str__(self) -> str:
        return "deadlock: " + self.cycle


def find_deadlock(arena: Arena) -> DeadlockReport | None:
    """A report if some memory waiter can never be granted, else None (still live)."""
    waits: dict[str, Wait] = {}
    for registered in (*arena.memory_waits(), *arena.waits.waits()):
        waits.setdefault(registered.waiter, registered)
    passive = arena.waits.passive()
    holdings = {owner: sum(row) for owner, row in arena.holdings().items()}
    agents = set(holdings) | set(waits) | set(passive)
    live = {a for a in agents if a not in waits and a not in passive}
    live |= {a for a, w in waits.items() if w.kind is WaitKind.EXTERNAL}
    changed = True
    while changed:
        changed = False
        memory_returns = any(holdings.get(a, 0) for a in live)
        for agent in sorted(agents - live):
            wait = waits.get(agent)
            if wait is None:
                ok = _any_live(passive[agent].freed_by, live, agents)
            elif wait.kind is WaitKind.MEMORY:
                ok = memory_returns
            else:
                ok = _any_live(wait.wakers, live, agents)
            if ok:
                live.add(agent)
                changed = True
    stuck = agents - live
    if not any(waits[a].kind is WaitKind.MEMORY for a in stuck if a in waits):
        return None
    rows = arena.holdings()
    lines: list[str] = []
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    # Holders that cannot act first, then the biggest holders: the cycle's spine.
    # A passive holder that holds nothing is no part of the cycle.
    for agent in sorted(stuck, key=lambda a: (a in waits, -holdings.get(a, 0), a)):
        wait = waits.get(agent)
        if wait is None and not holdings.get(agent):
            continue
        holds = (wait.holds if wait else passive[agent].holds) or arena_words(
            arena, rows.get(agent)
        )
        if wait is not None:
            relation = kind = f"waits for {wait.what}"
        else:
            relation = f"freed only by {_names(passive[agent].freed_by)}"
            kind = _family(relation)
        line = f"{agent} holds {holds} → {relation}"
        lines.append(line)
        groups.setdefault((_family(agent), kind), []).append((agent, line))
    shown: list[str] = []
    for (family, relation), members in groups.items():
        if len(members) == 1:
            shown.append(members[0][1])
            continue
        together = [0] * len(arena.levels)
        for agent, _ in members:
            for lvl, n in enumerate(rows.get(agent) or ()):
                together[lvl] += n
        plural = relation.replace("waits for", "wait for", 1)
        names = _names(tuple(agent for agent, _ in members))
        shown.append(
            f"{len(members)} of {family} ({names}) hold {arena_words(arena, together)} → {plural}"
        )
    full = 100 * arena.committed / arena.capacity
    shown.append(
        f"{arena.name} {full:.0f}% full ({format_bytes(arena.committed)} of "
        f"{format_bytes(arena.capacity)})"
    )
    return DeadlockReport(tuple(lines), "; ".join(shown), arena.committed, arena.capacity)


_NUMBER = re.compile(r"\b[0-9a-f]{8}\b|\d+")


def _family(text: str) -> str:
    """"writer-17" -> "writer-N": agents of one kind, doing one thing, are reported once."""
    return _NUMBER.sub("N", text)


def _names(agents: tuple[str, ...]) -> str:
    if not agents:
        return "nobody (held while its owner lives)"
    if len(agents) <= _CYCLE_NAMES:
        return ", ".join(agents)
    return ", ".join(agents[:_CYCLE_NAMES - 1]) + f", … {len(agents)} in all"


def arena_words(arena: Arena, row: list[int] | None) -> str:
    if not row or not any(row):
        return "nothing"
    return ", ".join(
        f"{format_bytes(n)} {arena.levels(lvl).name}" for lvl, n in enumerate(row) if n
    )


def _any_live(wakers: tuple[str, ...], live: set[str], agents: set[str]) -> bool:
    # A waker the books have never heard of holds nothing and waits for nothing: it runs.
    return any(w in live or w not in agents for w in wakers)


class Watchdog:
    """The backstop: someone has waited and nothing was granted or returned for `timeout` s.

    Sans-I/O: the caller feeds it the time and the arena's progress counter.
    """

    __slots__ = ("_last_change", "_last_progress", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._last_progress = -1
        self._last_change = 0.0

    def stalled(self, now: float, progress: int, waiting: bool) -> bool:
        if progress != self._last_progress or not waiting:
            self._last_progress = progress
            self._last_change = now
            return False
        return now - self._last_change >= self.timeout
