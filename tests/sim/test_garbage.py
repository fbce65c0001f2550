"""What a run leaves for the garbage collector: a swarm runs thousands of them, and every
full collection walks what is left in reference cycles. A writer cancelled while it
waits (a deadlock ends the run so) must not be one: its traceback holds its frames, and
a frame that names its own task makes task, traceback and frames a cycle."""

from __future__ import annotations

import gc
import types
from typing import Any

import pytest

from earmark.host.policy import Policy
from earmark.sim import swarm
from earmark.sim.scenario import Scenario, run_scenario
from earmark.sim.swarm import run_jobs, swarm_jobs


def test_writers_cancelled_by_a_deadlock_are_freed_without_the_collector() -> None:
    tracebacks = 0
    gc.collect()
    gc.disable()
    try:
        outcome = run_scenario(Scenario.draw(0, Policy.NONE, quick=True))
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        tracebacks = sum(isinstance(o, types.TracebackType) for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert outcome.outcome == "deadlocked"  # 1,122 writers, cancelled where they waited
    assert tracebacks == 0


def _frozen(_: Scenario) -> Any:
    return gc.get_freeze_count()


def test_a_swarm_worker_leaves_what_it_inherited_out_of_every_collection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(swarm, "run_scenario", _frozen)  # forked workers inherit it
    jobs = swarm_jobs(range(2), [Policy.RESERVE], quick=True)
    frozen: list[Any] = run_jobs(jobs, workers=2)
    assert len(frozen) == 2 and min(frozen) > 1000  # the modules, at least
