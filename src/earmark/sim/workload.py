"""The writers workload of `earmark demo`: N writers, a small arena, one policy.

It runs the page cache until every writer has written its share and fsync has
put it all on the device — or until the deadlock detector names a cycle, which
ends the run with that cycle instead of a hang. A watchdog (no memory granted or
returned for `stall_s`) is the backstop. Clocks are the loop's, so the same run
works on the simulator's virtual time.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from earmark.host.device import PageDevice
from earmark.host.pagecache import PageCache
from earmark.host.policy import HostTuning, Policy
from earmark.memory import Arena, DeadlockReport, Watchdog, find_deadlock
from earmark.memory.levels import PAGE_BYTES


@dataclass(slots=True)
class RunResult:
    policy: str
    writers: int
    outcome: str  # "completed" | "deadlocked"
    cycle: str | None
    seconds: float
    bytes_written: int
    p99_ms: float | None
    peak_arena_bytes: int
    arena_bytes: int
    seed: int
    #: The last write of each written page: page index -> (writer, generation).
    written: dict[int, tuple[int, int]]
    _expected: dict[int, int] | None = field(default=None, repr=False)

    @property
    def mbps(self) -> float:
        return self.bytes_written / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def expected(self) -> dict[int, int]:
        """What each written page must hold: page index -> crc32 (for verification).
        Made when first asked, from `written`: a crc32 per write was a twentieth of a
        simulated write's instructions, for a table most runs never read."""
        if self._expected is None:
            self._expected = {index: zlib.crc32(page_pattern(self.seed, w, index, gen))
                              for index, (w, gen) in self.written.items()}
        return self._expected


@dataclass(frozen=True, slots=True)
class Workload:
    writers: int
    pages_per_writer: int
    #: Pages the writers choose from (random, each writer in its own slice).
    span_pages: int
    seed: int = 1
    check_every_s: float = 0.05
    stall_s: float = 10.0
    #: Store through a one-page writable mapping (map, store, unmap), not pwrite.
    mapped: bool = False


def page_pattern(seed: int, writer: int, index: int, generation: int) -> bytes:
    """A page's content that says who wrote it and when, cheap to make and check."""
    head = f"earmark s{seed} w{writer} p{index} g{generation} ".encode()
    return (head * (PAGE_BYTES // len(head) + 1))[:PAGE_BYTES]


async def run_writers(
    arena: Arena,
    device: PageDevice,
    policy: Policy,
    work: Workload,
    tuning: HostTuning | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RunResult:
    cache = PageCache(arena, device, policy, tuning)
    cache.start()
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    written: dict[int, tuple[int, int]] = {}
    done_pages = 0
    slice_pages = max(1, work.span_pages // work.writers)

    async def writer(w: int) -> None:
        nonlocal done_pages
        rng = random.Random(work.seed * 1_000_003 + w)
        owner = f"writer-{w}"
        base = (w * slice_pages) % work.span_pages
        for gen in range(work.pages_per_writer):
            index = base + rng.randrange(slice_pages)
            data = page_pattern(work.seed, w, index, gen)
            start = loop.time()
            if work.mapped:
                mapped = await cache.map(index * PAGE_BYTES, PAGE_BYTES, owner=owner)
                mapped.views[0][:] = data
                await mapped.unmap()
            else:
                await cache.pwrite(index * PAGE_BYTES, data, owner=owner)
            latencies.append(loop.time() - start)
            written[index] = (w, gen)
            done_pages += 1
            if on_progress is not None:
                on_progress(done_pages, work.writers * work.pages_per_writer)

    async def all_writers() -> None:
        tasks = [loop.create_task(writer(w), name=f"writer-{w}") for w in range(work.writers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await cache.fsync(owner="fsync")

    start = loop.time()
    job = loop.create_task(all_writers(), name="writers")
    report = await _watch(arena, job, work)
    seconds = loop.time() - start
    await cache.close()
    if report is None:
        await job  # re-raise anything the writers hit
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None
    return RunResult(
        policy=policy.value,
        writers=work.writers,
        outcome="completed" if report is None else "deadlocked",
        cycle=None if report is None else report.cycle,
        seconds=seconds,
        bytes_written=done_pages * PAGE_BYTES,
        p99_ms=None if p99 is None else p99 * 1000,
        peak_arena_bytes=arena.high_water,
        arena_bytes=arena.capacity,
        seed=work.seed,
        written=written,
    )


async def _watch(arena: Arena, job: asyncio.Task[None], work: Workload) -> DeadlockReport | None:
    """Wait for the job; every `check_every_s` in which no memory was granted or returned,
    look for a deadlock and end the job on one. A system that moves has none, and
    looking costs as much as there are waiters, so while it stands still without one
    (a slow disk, a partition) the looks are spaced out, doubling up to a second."""
    loop = asyncio.get_running_loop()
    dog = Watchdog(work.stall_s)
    progress, interval = -1, work.check_every_s
    while not job.done():
        await asyncio.wait({job}, timeout=interval)
        if job.done():
            break
        moved, progress = arena.progress != progress, arena.progress
        report = None if moved else find_deadlock(arena)
        interval = work.check_every_s if moved else min(2 * interval, 1.0)
        if report is None and dog.stalled(loop.time(), arena.progress, arena.waiting):
            report = DeadlockReport(
                (), f"no memory granted or returned for {work.stall_s:g} s (watchdog)",
                arena.committed, arena.capacity,
            )
        if report is not None:
            job.cancel()
            await asyncio.gather(job, return_exceptions=True)
            return report
    return None
