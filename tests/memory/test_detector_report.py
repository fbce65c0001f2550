"""The deadlock report's words: one line per stuck agent, and agents of one kind doing one
thing summed into one clause of the cycle (how many, who, what they hold together).

Written against the mutants benchmarks/mutation.py found alive in memory/detector.py.
"""

from __future__ import annotations

import asyncio

import pytest

from earmark.memory import Arena, DeadlockReport, HostLevel, Watchdog, find_deadlock

KIB = 1024


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def hoarders(writers: int) -> DeadlockReport:
    """Each writer holds one page and waits for a second: the arena holds one page each."""

    async def writer(arena: Arena, name: str, go: asyncio.Event) -> None:
        await arena.allocate(HostLevel.PAGE, 4 * KIB, owner=name)
        await go.wait()
        await arena.allocate(HostLevel.PAGE, 4 * KIB, owner=name)

    async def main() -> DeadlockReport:
        arena = Arena(writers * 4 * KIB)
        go = asyncio.Event()
        tasks = [asyncio.create_task(writer(arena, f"writer-{i}", go)) for i in range(writers)]
        await settle()
        go.set()
        await settle()
        report = find_deadlock(arena)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert report is not None
        return report

    return asyncio.run(main())


@pytest.mark.parametrize(("writers", "names"), [
    (4, "writer-0, writer-1, writer-2, writer-3"),
    (5, "writer-0, writer-1, writer-2, … 5 in all"),
])
def test_a_family_of_stuck_agents_is_one_clause_with_what_they_hold_together(
        writers: int, names: str) -> None:
    report = hoarders(writers)
    assert report.stuck == tuple(
        f"writer-{i} holds 4 KiB PAGE → waits for 4 KiB PAGE" for i in range(writers))
    total = f"{writers * 4} KiB"
    assert report.cycle == (f"{writers} of writer-N ({names}) hold {total} PAGE → wait for "
                            f"4 KiB PAGE; arena 100% full ({total} of {total})")
    assert report.committed == report.capacity == writers * 4 * KIB
    assert str(report) == "deadlock: " + report.cycle


def test_the_watchdog_counts_a_stall_from_the_last_progress_it_saw() -> None:
    dog = Watchdog(timeout=10.0)
    assert not dog.stalled(100.0, progress=0, waiting=True)  # first look: progress is news
    assert not dog.stalled(109.0, progress=0, waiting=True)
    assert dog.stalled(110.0, progress=0, waiting=True)
    assert not dog.stalled(111.0, progress=1, waiting=True)
    assert not dog.stalled(120.0, progress=1, waiting=False)  # nobody waits: no stall
    assert not dog.stalled(129.0, progress=1, waiting=True)
    assert dog.stalled(130.0, progress=1, waiting=True)
