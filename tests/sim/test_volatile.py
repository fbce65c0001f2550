"""A target crash with a volatile write cache: the disk model, its oracle, and the stack
reporting at fsync the writes the crash took (the oracle caught it when it did not)."""

from __future__ import annotations

import dataclasses
import zlib

import pytest

from earmark.host.policy import Policy
from earmark.initiator.durability import Durability
from earmark.memory.levels import PAGE_BYTES
from earmark.sim.disk_model import DiskModel
from earmark.sim.scenario import Outcome, Scenario, Violation, run_scenario
from earmark.sim.swarm import run_jobs, summarise
from earmark.sim.volatile import Loss, VolatileCache
from earmark.target.backing import MemoryBacking

PAGES = 64


def _page(n: int) -> bytes:
    return bytes([n]) * PAGE_BYTES


def _read(cache: VolatileCache, index: int) -> bytes:
    page = bytearray(PAGE_BYTES)
    cache.readinto(index * PAGE_BYTES, [memoryview(page)])
    return bytes(page)


def _cache(loss: Loss, seed: int = 1) -> VolatileCache:
    return VolatileCache(MemoryBacking(PAGES * PAGE_BYTES), loss, seed, DiskModel())


def _write(cache: VolatileCache, index: int, n: int) -> None:
    cache.write(index * PAGE_BYTES, [memoryview(_page(n))])


@pytest.mark.parametrize("loss", list(Loss))
def test_a_flushed_write_survives_every_power_cut_and_an_unflushed_one_as_the_loss_says(
    loss: Loss,
) -> None:
    cache = _cache(loss)
    for index in range(PAGES):
        _write(cache, index, 1)
    cache.sync()
    for index in range(PAGES):
        _write(cache, index, 2)
    assert all(_read(cache, i) == _page(2) for i in range(PAGES))  # reads see the cache
    cache.cut()
    _write(cache, 0, 3)  # the dead target's last write reaches nothing
    cache.sync()
    cache.restore()
    kept = [_read(cache, i) == _page(2) for i in range(PAGES)]
    assert all(_read(cache, i) in (_page(1), _page(2)) for i in range(PAGES))
    assert {Loss.ALL: not any(kept), Loss.NONE: all(kept),
            Loss.SOME: 0 < sum(kept) < PAGES}[loss]
    assert cache.model.broken(lambda i: _read(cache, i)) == []


def test_after_a_power_cut_a_flush_vouches_only_for_what_was_written_after_it() -> None:
    model = DiskModel()
    model.written(0, _page(1))
    model.written(1, _page(1))
    model.cut()  # page 0 and 1: zeros, or version 1
    model.written(1, _page(2))
    model.synced()  # page 1: version 2; page 0 still either
    crc = zlib.crc32
    assert model.holds(0, crc(_page(0))) and model.holds(0, crc(_page(1)))
    assert model.holds(1, crc(_page(2)))
    assert not model.holds(1, crc(_page(1))) and not model.holds(1, crc(_page(0)))
    assert not model.holds(0, crc(_page(9)))  # never written


def _crash(loss: Loss) -> Scenario:
    """A quick reserve run with no other fault; the target crashes early with a volatile
    cache (the writers run from about 5 ms on)."""
    drawn = Scenario.draw(3, Policy.RESERVE, faults=False, quick=True)
    return dataclasses.replace(drawn, crashes=(0.01,), cache=loss)


@pytest.mark.parametrize("loss", list(Loss))
def test_a_crash_that_may_have_lost_acknowledged_writes_is_reported_by_fsync(loss: Loss) -> None:
    outcome = run_scenario(_crash(loss))
    # The initiator cannot know what the cache kept: after a power on it reports a
    # possible loss whatever the disk did, and the disk kept its contract.
    assert outcome.outcome == "cache-lost" and not outcome.violations
    assert outcome.reconnects == 1


def test_without_the_power_on_the_flush_after_the_crash_vouches_for_lost_writes_and_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Durability, "attention", lambda self, error: None)
    outcome = run_scenario(_crash(Loss.ALL))
    assert outcome.outcome == "completed" and outcome.violations == [Violation.LOST]
    assert outcome.lost_writes > 0


def test_a_disk_that_drops_flushed_writes_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def sync_nothing(self: VolatileCache) -> None:
        self.dirty = {}  # says flushed, wrote nothing back
        self.model.synced()

    monkeypatch.setattr(VolatileCache, "sync", sync_nothing)
    outcome = run_scenario(_crash(Loss.NONE))
    assert Violation.DURABLE in outcome.violations


def test_an_oracle_that_counts_unflushed_writes_as_kept_fails_a_cut_that_lost_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(DiskModel, "cut", DiskModel.synced)  # a cut that keeps the cache
    assert Violation.DURABLE in run_scenario(_crash(Loss.ALL)).violations
    assert not run_scenario(_crash(Loss.NONE)).violations


def _with_cache(seeds: range) -> list[Scenario]:
    drawn = (Scenario.draw(seed, Policy.RESERVE, quick=True) for seed in seeds)
    return [sc for sc in drawn if sc.cache is not None]


def test_swarm_seeds_that_draw_the_crash_with_a_volatile_cache_meet_every_oracle() -> None:
    jobs = _with_cache(range(400))
    assert {sc.cache for sc in jobs} == set(Loss)
    outcomes: list[Outcome] = run_jobs(jobs, workers=2)
    (summary,) = summarise(outcomes)
    assert (summary.violations, summary.deadlocks, summary.lost_writes) == (0, 0, 0), summary
    assert summary.caches_lost > 0
    again = run_scenario(jobs[0])
    assert again.as_json() == outcomes[0].as_json()


def test_a_reset_before_the_first_command_after_a_crash_still_reports_the_lost_cache() -> None:
    """Seed 8815 of the 10,000-seed swarm: the target crashed, the initiator logged in
    again, and a connection reset ended that session before any command heard POWER ON;
    the reinstated session heard nothing, fsync succeeded and 141 writes were lost."""
    out = run_scenario(Scenario.draw(8815, Policy.RESERVE))
    assert out.outcome == "cache-lost" and out.violations == [] and out.lost_writes == 0
