"""Breadth-first search over every interleaving of the model (:mod:`earmark.check.model`).

Each reachable state is visited once. A state with work left and nothing able
to move is a deadlock; breadth-first, the first one found has the shortest
schedule that reaches it, which is what a person wants to read. A policy is
proven deadlock-free for a configuration when the search ends without one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from earmark.check.model import Config, State, describe, initial, is_done, steps

__all__ = ["Verdict", "explore"]


@dataclass(frozen=True, slots=True)
class Verdict:
    config: Config
    states: int
    """Distinct states visited."""
    deadlock: str | None
    """The stuck state in words, or None when every schedule completes."""
    trace: tuple[str, ...]
    """The shortest schedule to the deadlock (empty when there is none)."""

    def summary(self) -> str:
        c = self.config
        head = (f"{c.policy.value}: {c.writers} writers x {c.pages} pages, arena {c.arena} "
                f"units, {c.writebacks} writebacks")
        if c.emergency:
            head += f", emergency {c.emergency}"
        if c.merge > 1:
            head += f", requests of up to {c.merge} pages"
        if self.deadlock is None:
            return f"{head}: no deadlock on any schedule ({self.states} states)"
        return (f"{head}: DEADLOCK after {len(self.trace)} steps ({self.states} states "
                f"searched): {self.deadlock}")


def explore(config: Config, *, max_states: int = 2_000_000) -> Verdict:
    """Search every schedule; raises ValueError when the system is too big to finish."""
    start = initial(config)
    parent: dict[State, tuple[State, str] | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        moved = False
        for words, nxt in steps(config, state):
            moved = True
            if nxt not in parent:
                if len(parent) >= max_states:
                    raise ValueError(f"more than {max_states} states: make the system smaller")
                parent[nxt] = (state, words)
                queue.append(nxt)
        if not moved and not is_done(state):
            return Verdict(config, len(parent), describe(config, state), _trace(parent, state))
    return Verdict(config, len(parent), None, ())


def _trace(parent: dict[State, tuple[State, str] | None], state: State) -> tuple[str, ...]:
    words: list[str] = []
    link = parent[state]
    while link is not None:
        state, step = link
        words.append(step)
        link = parent[state]
    return tuple(reversed(words))
