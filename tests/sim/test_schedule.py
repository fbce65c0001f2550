"""The seeded schedule's `pct` rule: at a change point the running owner drops below every
other, and stays there, for each of its callbacks still queued."""

from __future__ import annotations

import asyncio

from earmark.sim.schedule import ReadyQueue, Schedule


class Owner:
    def step(self) -> None:
        """A callback whose owner is this object (as a task's step is the task's)."""


def test_pct_runs_a_demoted_owner_after_every_other_ready_owner() -> None:
    loop = asyncio.new_event_loop()
    try:
        a, b = Owner(), Owner()
        # horizon 1: the first choice is the change point.
        queue = ReadyQueue(Schedule.PCT, seed=7, change_points=1, horizon=1)
        for owner in (a, b, a, b, a, b):
            queue.append(asyncio.Handle(owner.step, (), loop))
        order = [queue.popleft()._callback.__self__ for _ in range(6)]
    finally:
        loop.close()
    first = order[0]
    other = b if first is a else a
    assert order == [first, other, other, other, first, first]
