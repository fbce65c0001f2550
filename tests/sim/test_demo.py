"""`earmark demo`, small: each policy's fate on real TCP and on the simulator, data checked."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from rich.console import Console

from earmark.host.policy import Policy
from earmark.memory import Arena
from earmark.memory.levels import PAGE_BYTES
from earmark.sim.demo import DemoConfig, Row, live, render, run_matrix
from earmark.sim.stacks import SimStack, TcpStack
from earmark.sim.virtualtime import run_virtual


@pytest.mark.tcp
def test_tcp_none_deadlocks_named_and_reserve_completes_verified() -> None:
    config = DemoConfig(writers=[1, 16], policies=[Policy.NONE, Policy.RESERVE],
                        arena_bytes=2 << 20, total_pages=768)
    with TcpStack(config.lun_bytes) as stack:
        rows = asyncio.run(live(stack, config, Console(quiet=True)))
    fates = {(r.result.policy, r.result.writers): r for r in rows}
    for writers in (1, 16):
        none = fates[("none", writers)]
        assert none.result.outcome == "deadlocked"
        assert none.result.cycle is not None and "watchdog" not in none.result.cycle
        assert "freed only by" in none.result.cycle
        reserve = fates[("reserve", writers)]
        assert reserve.result.outcome == "completed", reserve.result.cycle
        assert reserve.verified is True
        assert reserve.result.peak_arena_bytes <= reserve.result.arena_bytes


def test_cli_json_on_the_simulator() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "earmark.cli", "demo", "--sim", "--json", "--writers", "1,32",
         "--pages", "1024"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout.strip().splitlines()[-1])["runs"]
    assert {(r["policy"], r["writers"]) for r in runs} == {
        (p.value, w) for p in Policy for w in (1, 32)}
    for r in runs:
        assert r["peak_arena_bytes"] <= r["arena_bytes"]
        if r["policy"] == "reserve":
            assert r["outcome"] == "completed" and r["verified"] is True
        if r["policy"] == "none":
            assert r["outcome"] == "deadlocked" and r["cycle"] and r["verified"] is None


@pytest.mark.tcp
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_cli_runs_the_host_on_the_loop_asked_for(loop: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "earmark.cli", "demo", "--loop", loop, "--json", "--writers", "4",
         "--policies", "reserve", "--pages", "256"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert f"host on {loop}" in done.stderr
    (run,) = json.loads(done.stdout.strip().splitlines()[-1])["runs"]
    assert run["outcome"] == "completed" and run["verified"] is True


def test_cli_bad_arguments_are_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "earmark.cli", "demo", "--writers", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--writers '0' must be positive counts" in done.stderr
    assert "Traceback" not in done.stderr


class CorruptingStack(SimStack):
    """The simulator's stack, with one written page flipped on the target's disk behind the
    initiator's back before the demo reads it back: the one thing `verified` must catch.
    ``pick`` chooses which of the written pages (the verifier reads them a span at a
    time: the first of a span, one inside it, the last of all)."""

    def __init__(self, lun_bytes: int, pick: Callable[[list[int]], int]) -> None:
        super().__init__(lun_bytes)
        self.pick = pick

    async def verify(self, expected: dict[int, int]) -> bool:
        unit = next(iter(self.server.portal.targets.values())).units[0]
        index = self.pick(sorted(expected))
        page = bytearray(PAGE_BYTES)
        unit.backing.readinto(index * PAGE_BYTES, [memoryview(page)])
        page[0] ^= 0xFF
        unit.backing.write(index * PAGE_BYTES, [memoryview(page)])
        return await super().verify(expected)


@pytest.mark.parametrize("pick", [min, max, lambda written: written[len(written) // 2 + 1]],
                         ids=["first", "last", "inside"])
def test_a_page_changed_behind_the_demos_back_shows_as_corrupt(
        pick: Callable[[list[int]], int]) -> None:
    config = DemoConfig(writers=[4], policies=[Policy.RESERVE], total_pages=256, seed=5)

    async def main() -> list[Row]:
        async with CorruptingStack(config.lun_bytes, pick) as stack:
            return await run_matrix(stack, config)

    (row,) = run_virtual(main)
    assert row.result.outcome == "completed" and row.result.expected
    assert row.verified is False and row.as_json()["verified"] is False
    console = Console(record=True, width=120)
    render([row], console)
    assert "CORRUPT" in console.export_text()


def test_mempool_and_throttle_meet_their_fates_with_the_demos_own_tuning() -> None:
    # The demo's defaults (`earmark demo --sim`): a 4 MiB host arena, Linux's min watermark
    # for it as the emergency pool (256 KiB), Linux's dirty limits checked as
    # balance_dirty_pages checks them, direct reclaim throttled as throttle_direct_reclaim
    # throttles it. These fates move, on purpose, with the policies: this is where each
    # baseline breaks (throttle past 64 writers; mempool not on this grid: with its
    # reclaimers throttled it survives every count, as the test beside this one shows).
    config = DemoConfig(writers=[1, 64, 128, 1024, 2048],
                        policies=[Policy.MEMPOOL, Policy.THROTTLE], total_pages=4096)

    async def main() -> list[Row]:
        async with SimStack(config.lun_bytes) as stack:
            return await run_matrix(stack, config)

    rows = run_virtual(main)
    fates = {(r.result.policy, r.result.writers): r.result.outcome for r in rows}
    assert fates == {
        ("mempool", 1): "completed", ("mempool", 64): "completed",
        ("mempool", 128): "completed", ("mempool", 1024): "completed",
        ("mempool", 2048): "completed",
        ("throttle", 1): "completed", ("throttle", 64): "completed",
        ("throttle", 128): "deadlocked", ("throttle", 1024): "deadlocked",
        ("throttle", 2048): "deadlocked",
    }
    for row in rows:
        if row.result.outcome == "completed":
            assert row.verified is True
        else:
            assert row.result.cycle is not None and "freed only by" in row.result.cycle


def test_mempool_breaks_at_2048_writers_when_its_reclaimers_are_not_throttled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What throttle_direct_reclaim buys: without it, every writer that finds memory full
    writes back with PF_MEMALLOC, and at 2048 of them their writebacks drain the pool."""
    monkeypatch.setattr(Arena, "direct_reclaim_allowed", lambda self: True)
    config = DemoConfig(writers=[2048], policies=[Policy.MEMPOOL], total_pages=4096)

    async def main() -> list[Row]:
        async with SimStack(config.lun_bytes) as stack:
            return await run_matrix(stack, config)

    (row,) = run_virtual(main)
    assert row.result.outcome == "deadlocked"
    assert row.result.cycle is not None and "freed only by" in row.result.cycle
