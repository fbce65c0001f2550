"""The seeds on a dask.distributed cluster (a LocalCluster on loopback): the same outcomes
as on this process, whichever worker ran which seed."""

from __future__ import annotations

import pytest
from distributed import LocalCluster

from earmark.host.policy import Policy
from earmark.sim.swarm import run_jobs, summarise, swarm_jobs


@pytest.mark.tcp  # the scheduler and its workers talk over loopback sockets
def test_a_swarm_on_a_cluster_is_the_same_swarm() -> None:
    jobs = swarm_jobs(range(6), [Policy.NONE, Policy.RESERVE], quick=True)
    here = [o.as_json() for o in run_jobs(jobs)]
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster:  # type: ignore[no-untyped-call]
        there = run_jobs(jobs, cluster=cluster.scheduler_address)
    assert [o.as_json() for o in there] == here
    none, reserve = summarise(there)
    assert none.deadlocks > 0 and reserve.deadlocks == 0 and not reserve.violations
