"""What a run leaves for the garbage collector: a swarm runs thousands of them, and every
full collection walks what is left in reference cycles. A writer cancelled while it
waits (a deadlock ends the run so) must not be one: its traceback holds its frames, and
a frame that names its own task makes task, traceback and frames a cycle."""

from __future__ import annotations

import gc
import types

from earmark.host.policy import Policy
from earmark.sim.scenario import Scenario, run_scenario


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
