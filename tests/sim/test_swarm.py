"""The simulator as the proof: seeds that replay exactly in any process, a swarm per policy
with its oracles, and the swarm catching `reserve` once its receive buffers are not reserved.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest

from earmark.host.policy import Policy
from earmark.initiator import admission
from earmark.initiator.admission import Admission, Admitted
from earmark.iscsi.negotiation import SessionParams
from earmark.memory import Arena, HostLevel
from earmark.memory.claim import Claim
from earmark.memory.draw import draw_charge
from earmark.runtime.initiator_device import BlockDevice
from earmark.sim.scenario import Outcome, Scenario, Violation, run_scenario
from earmark.sim.swarm import run_jobs, summarise, swarm_jobs

#: Seeds per policy in the default suite's swarm (the 10,000-seed one is a slow job).
SWARM_SEEDS = 200
#: The swarm's limit: with the trace-hash test it takes about 97 CPU-seconds on 2 workers;
#: beside other work it took 128 s at load 2.3-4.8 and 220 s at load 3.5-5.7, so about
#: 300 s at load 10. Three times that, not the suite's 120 s.
SWARM_TIMEOUT_S = 900

_HASHES = """
from earmark.host.policy import Policy
from earmark.sim.scenario import Scenario, run_scenario
policies = list(Policy)
print(" ".join(run_scenario(Scenario.draw(seed, policies[seed % 4], quick=True)).trace_hash
               for seed in range(20)))
"""


def test_same_seed_same_trace_hash_in_processes_with_different_hash_seeds() -> None:
    runs = [subprocess.Popen([sys.executable, "-c", _HASHES], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONHASHSEED": str(h)})
            for h in (0, 1, 4242)]
    hashes = [run.communicate(timeout=600)[0].split() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert len(hashes[0]) == 20 and len(set(hashes[0])) == 20  # each seed its own run
    assert hashes[0] == hashes[1] == hashes[2]


@pytest.mark.timeout(SWARM_TIMEOUT_S)
def test_a_swarm_per_policy_meets_every_oracle_and_only_reserve_never_deadlocks() -> None:
    jobs = swarm_jobs(range(SWARM_SEEDS), list(Policy), quick=True)
    summary = {s.policy: s for s in summarise(run_jobs(jobs, workers=2))}
    assert set(summary) == {p.value for p in Policy}
    for s in summary.values():
        assert s.runs == SWARM_SEEDS
        assert (s.violations, s.lost_writes, s.failing) == (0, 0, []), s
    assert summary["reserve"].deadlocks == 0
    assert summary["none"].deadlocks > SWARM_SEEDS // 4
    assert summary["throttle"].deadlocks > 0


def test_the_cli_swarm_under_none_finds_a_deadlock_within_ten_seeds() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "earmark.cli", "sim", "swarm", "--seeds", "10", "--policies",
         "none", "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (none,) = json.loads(done.stdout.strip().splitlines()[-1])["policies"]
    assert none["runs"] == 10 and none["deadlocks"] >= 1 and none["violations"] == 0


def _receive_buffers_unreserved(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `reserve` would be if a command's R2T and response buffers were not reserved
    with it but allocated as they arrive, like any other allocation (behind the writers
    already waiting for memory, with no PF_MEMALLOC pass)."""
    command_bytes = admission.command_bytes

    def without_wire(params: SessionParams, write: bool, nbytes: int) -> tuple[int, int]:
        return command_bytes(params, write, nbytes)[0], 0

    async def draw(self: Admission, cmd: Admitted, claim: Claim, task_bytes: int,
                   wire_bytes: int, reserved: bool) -> None:
        cmd.held = [await draw_charge(self.arena, HostLevel.TASK, task_bytes, owner=cmd.owner)]
        cmd.rx_buffers = []  # received buffers: allocated on arrival

    monkeypatch.setattr(admission, "command_bytes", without_wire)
    log_in = BlockDevice._log_in

    async def log_in_reading_as_they_come(self: BlockDevice) -> None:
        await log_in(self)
        assert self.stream is not None
        self.stream.admit = self._reader.admit  # the reader allocates as PDUs arrive

    monkeypatch.setattr(Admission, "draw", draw)
    monkeypatch.setattr(BlockDevice, "_log_in", log_in_reading_as_they_come)
    monkeypatch.setattr(Arena, "memalloc", contextlib.nullcontext)


def _first_failure(seeds: range) -> Outcome | None:
    for seed in seeds:
        outcome = run_scenario(Scenario.draw(seed, Policy.RESERVE, quick=True))
        if outcome.failed:
            return outcome
    return None


def test_without_its_receive_buffer_reservation_reserve_fails_and_the_seed_replays_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _receive_buffers_unreserved(monkeypatch)
    failed = _first_failure(range(100))
    assert failed is not None, "100 seeds and no failure: the oracles lost their teeth"
    assert failed.violations == [Violation.STALL] and failed.outcome == "deadlocked"
    assert failed.cycle is not None and "WIRE" in failed.cycle
    again = run_scenario(Scenario.draw(failed.seed, Policy.RESERVE, quick=True))
    assert again.as_json() == failed.as_json()


@pytest.mark.slow
@pytest.mark.timeout(6 * 3600)
def test_ten_thousand_seeds_under_reserve_no_deadlock_no_loss_no_violation() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "earmark.cli", "sim", "swarm", "--seeds", "10000", "--policies",
         "reserve", "--workers", str(os.cpu_count() or 1), "--json"],
        capture_output=True, text=True, timeout=6 * 3600)
    (reserve,) = json.loads(done.stdout.strip().splitlines()[-1])["policies"]
    assert (reserve["runs"], reserve["deadlocks"], reserve["lost_writes"],
            reserve["violations"]) == (10000, 0, 0, 0), reserve
    assert done.returncode == 0
