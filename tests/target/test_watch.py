"""The target's deadlock watch, sans-I/O: the detector is asked only once memory stalls."""

from __future__ import annotations

import asyncio

import pytest

from earmark.memory import Arena
from earmark.memory.levels import TargetLevel
from earmark.target.watch import DeadlockWatch

KIB = 1024


@pytest.mark.parametrize("passive", [True, False])
def test_a_deadlock_is_named_only_after_a_stall_the_detector_finds_dead(passive: bool) -> None:
    """The arena is full and the reader waits; who holds it decides: buffers freed by
    nobody (a deadlock), or a command whose backing I/O runs (live: it gives them back)."""

    async def main() -> None:
        arena = Arena(64 * KIB, levels=TargetLevel)
        watch = DeadlockWatch(arena, timeout=2.0)
        assert watch.interval == 0.5
        holder = "conn-1/cmds" if passive else "conn-1/itt-00000001"
        held = await arena.allocate(TargetLevel.BUFFER, 64 * KIB, owner=holder)
        if passive:
            arena.waits.set_passive(holder, ())  # freed by nobody
        assert watch.check(0.0) is None  # nobody waits: the last moment memory was not stuck
        waiter = asyncio.ensure_future(
            arena.allocate(TargetLevel.BUFFER, 16 * KIB, owner="conn-1/reader"))
        await asyncio.sleep(0)
        assert watch.check(1.9) is None and watch.report is None  # not stalled long enough
        report = watch.check(2.0)
        if passive:
            assert report is not None and watch.report is report
            assert "conn-1/reader holds nothing → waits for 16 KiB BUFFER" in report.stuck
        else:
            assert report is None and watch.report is None
        held.free()
        (await waiter).free()
        assert watch.check(9.0) is None and watch.report is report  # the last one is kept

    asyncio.run(main())
