"""Many seeds, on local processes: each seed one run (:mod:`earmark.sim.scenario`), the
results summed per policy.

A run depends on its seed alone, so it does not matter which process ran it or in
what order they finished: results are put back in seed order, and the summary is
the same wherever the seeds ran.
"""

from __future__ import annotations

import gc
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

from earmark.host.policy import Policy
from earmark.sim.scenario import Outcome, Scenario, run_scenario

__all__ = ["FIRST_FAILING", "PolicySummary", "run_jobs", "summarise", "swarm_jobs"]

#: How many failing seeds a summary names (to replay with `earmark sim run --seed`).
FIRST_FAILING = 5

Done = Callable[[Outcome], None]


def swarm_jobs(seeds: Iterable[int], policies: Iterable[Policy], **draw: bool) -> list[Scenario]:
    """``draw``: :meth:`Scenario.draw`'s switches (faults, resets, io_errors, timeouts,
    crashes, volatile, quick)."""
    return [Scenario.draw(seed, policy, **draw) for policy in policies for seed in seeds]


def run_jobs(jobs: list[Scenario], *, workers: int = 1, cluster: str | None = None,
             done: Done | None = None) -> list[Outcome]:
    """Every job's outcome, in the jobs' order; `done` is called as each finishes. The jobs
    run on `workers` local processes, or on the dask.distributed scheduler at `cluster`."""
    ordered: list[Outcome | None] = [None] * len(jobs)
    runs = _outcomes(jobs, workers) if cluster is None else _on_cluster(jobs, cluster)
    for i, outcome in runs:
        ordered[i] = outcome
        if done is not None:
            done(outcome)
    return [o for o in ordered if o is not None]


def _outcomes(jobs: list[Scenario], workers: int) -> Iterator[tuple[int, Outcome]]:
    """(index of the job, its outcome), as they finish."""
    if workers <= 1:
        yield from enumerate(map(run_scenario, jobs))
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_settle)
    try:
        index = {pool.submit(run_scenario, job): i for i, job in enumerate(jobs)}
        for future in as_completed(index):
            yield index[future], future.result()
    finally:  # interrupted: what has not started never will
        pool.shutdown(wait=False, cancel_futures=True)


def _settle() -> None:
    """A worker's start: what it inherited (modules, the parent's objects) lives as long as
    it does, so the collector is told to leave it alone. Every full collection would
    otherwise walk it again; with it frozen, a swarm's collector time is about half
    (what a run leaves behind is still collected, so memory stays bounded)."""
    gc.collect()
    gc.freeze()


def _on_cluster(jobs: list[Scenario], address: str) -> Iterator[tuple[int, Outcome]]:
    from distributed import Client, as_completed  # the cluster extra: only this needs it

    with Client(address) as client:  # type: ignore[no-untyped-call]
        futures = client.map(run_scenario, jobs, pure=False)
        index = {future.key: i for i, future in enumerate(futures)}
        for future, outcome in as_completed(futures, with_results=True):  # type: ignore[no-untyped-call]
            yield index[future.key], outcome


@dataclass(slots=True)
class PolicySummary:
    policy: str
    runs: int = 0
    deadlocks: int = 0
    #: Runs the disk failed a write in, and fsync said so (owed, not a violation).
    io_errors: int = 0
    #: Runs a partition outlasted the initiator's reconnect timeout in, reported so.
    sessions_lost: int = 0
    #: Runs a crash lost acknowledged writes no flush had covered in, and fsync said so.
    caches_lost: int = 0
    reconnects: int = 0
    lost_writes: int = 0
    violations: int = 0
    failing: list[int] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.runs += 1
        self.deadlocks += outcome.outcome == "deadlocked"
        self.io_errors += outcome.outcome == "io-error"
        self.sessions_lost += outcome.outcome == "session-lost"
        self.caches_lost += outcome.outcome == "cache-lost"
        self.reconnects += outcome.reconnects
        self.lost_writes += outcome.lost_writes
        if outcome.failed:
            self.violations += 1
            if len(self.failing) < FIRST_FAILING:
                self.failing.append(outcome.seed)

    def as_json(self) -> dict[str, object]:
        return {"policy": self.policy, "runs": self.runs, "deadlocks": self.deadlocks,
                "io_errors": self.io_errors, "sessions_lost": self.sessions_lost,
                "caches_lost": self.caches_lost,
                "reconnects": self.reconnects,
                "lost_writes": self.lost_writes, "violations": self.violations,
                "first_failing_seeds": self.failing}


def summarise(outcomes: Iterable[Outcome]) -> list[PolicySummary]:
    """One summary per policy, in the order the policies first appear."""
    by_policy: dict[str, PolicySummary] = {}
    for outcome in outcomes:
        by_policy.setdefault(outcome.policy, PolicySummary(outcome.policy)).add(outcome)
    return list(by_policy.values())
