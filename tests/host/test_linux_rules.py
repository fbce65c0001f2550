"""The baselines follow Linux's own rules: every expected value here is worked out by
hand from the rule in mm/page-writeback.c or mm/page_alloc.c, not by calling the code.
"""

from __future__ import annotations

import asyncio

import pytest

from earmark.host.dirty_throttle import DirtyThrottle, dirty_poll_interval, global_ratelimit_pages
from earmark.host.modeldevice import ModelDevice
from earmark.host.pagecache import PageCache
from earmark.host.policy import Policy
from earmark.host.watermarks import emergency_bytes, min_free_kbytes
from earmark.memory import Arena, HostLevel
from earmark.memory.arena import allow_direct_reclaim
from earmark.memory.levels import PAGE_BYTES
from earmark.memory.waits import WaitKind
from earmark.sim.demo import DemoConfig
from tests.loop_turns import wait_for

BIG = 1 << 20
"""A threshold of 2**20 pages (4 GiB dirty): its shared counter limit, 2**20 / 32 = 32768
pages, stays out of the way of the per-task tests."""


def pages_until_due(throttle: DirtyThrottle, task: str, most: int = 5000) -> int:
    """Dirty pages as `task` (asking after each, as the page cache does) until it is due."""
    for n in range(1, most + 1):
        throttle.dirtied(task)
        if throttle.due(task):
            return n
    raise AssertionError(f"{task} was not due after {most} pages")


@pytest.mark.parametrize(("dirty", "thresh", "interval"), [
    # 1 << (ilog2(thresh - dirty) >> 1): about the square root of the margin
    (0, BIG, 1024),  # ilog2(2**20) = 20 -> 10
    (0, 10_000, 64),  # ilog2(10000) = 13 -> 6
    (0, 204, 8),  # the demo's 4 MiB arena at 20 %: ilog2(204) = 7 -> 3
    (100, 204, 8),  # 104 left: ilog2 = 6 -> 3
    (140, 204, 8),  # 64 left: ilog2 = 6 -> 3
    (141, 204, 4),  # 63 left: ilog2 = 5 -> 2
    (200, 204, 2),  # 4 left: ilog2 = 2 -> 1
    (201, 204, 1),  # 3 left: ilog2 = 1 -> 0
    (203, 204, 1),  # 1 left: ilog2 = 0
    (204, 204, 1),  # at the threshold
    (300, 204, 1),  # above it
])
def test_dirty_poll_interval_is_the_square_root_of_the_margin(
        dirty: int, thresh: int, interval: int) -> None:
    assert dirty_poll_interval(dirty, thresh) == interval


def test_a_new_task_looks_after_32_pages_then_at_the_margins_square_root() -> None:
    throttle = DirtyThrottle(BIG)
    assert pages_until_due(throttle, "w") == 32  # 128 KiB, copy_process
    throttle.looked("w", dirty=0)
    assert pages_until_due(throttle, "w") == 1024  # far from the threshold
    throttle.looked("w", dirty=BIG - 4)
    assert pages_until_due(throttle, "w") == 2  # near it
    throttle.looked("w", dirty=BIG - 1)
    assert pages_until_due(throttle, "w") == 1  # every page


def test_above_the_limit_every_task_looks_every_8_pages() -> None:
    throttle = DirtyThrottle(BIG)
    throttle.looked("far", dirty=0)  # pause 1024
    throttle.looked("near", dirty=BIG - 4)  # pause 2
    assert not throttle.over(BIG)
    assert not throttle.exceeded
    assert throttle.over(BIG + 1)  # someone's look finds the limit exceeded
    assert throttle.exceeded
    assert pages_until_due(throttle, "far") == 8  # 32 KiB >> 2
    assert pages_until_due(throttle, "near") == 2  # min(2, 8)
    assert pages_until_due(throttle, "fresh") == 8  # min(32, 8)
    throttle.looked("other", dirty=0)  # a look that ends below the limit clears it
    assert not throttle.exceeded
    throttle.looked("far", dirty=0)
    assert pages_until_due(throttle, "far") == 1024


@pytest.mark.parametrize(("thresh", "cpus", "limit"), [
    (204, 1, 16),  # 204 // 32 = 6, raised to the floor of 16
    (512, 1, 16),
    (2048, 1, 64),
    (2048, 2, 32),
    (BIG, 1, 32768),
])
def test_the_shared_counters_limit(thresh: int, cpus: int, limit: int) -> None:
    assert global_ratelimit_pages(thresh, cpus) == limit
    assert DirtyThrottle(thresh, cpus=cpus).ratelimit_pages == limit


def test_the_shared_counter_makes_whoever_reaches_it_look() -> None:
    throttle = DirtyThrottle(2048)  # 64 pages between looks, whoever dirties them
    due = []
    for i in range(130):  # 130 tasks, one page each: none reaches its own 32
        throttle.dirtied(f"w{i}")
        if throttle.due(f"w{i}"):
            due.append(i)
    assert due == [63, 127]  # the 64th and 128th page; the count restarts after each
    assert throttle.shared == 2


def test_a_task_due_on_its_own_count_restarts_the_shared_counter() -> None:
    throttle = DirtyThrottle(2048)
    for i in range(40):
        throttle.dirtied(f"other{i}")
        assert not throttle.due(f"other{i}")
    assert pages_until_due(throttle, "w") == 24  # the shared count reaches 64 first
    assert pages_until_due(throttle, "w") == 8  # own count 32 after 8 more
    assert throttle.shared == 0  # that look accounts for the CPU's pages


@pytest.mark.parametrize(("memory_kib", "kib"), [
    # int_sqrt(16 x KiB), clamped to 128 KiB .. 256 MiB
    (4 * 1024, 256),  # the demo's 4 MiB arena: sqrt(65536)
    (16 * 1024, 512),  # 16 MiB: sqrt(262144)
    (1024 * 1024, 4096),  # 1 GiB: sqrt(16777216)
    (3 * 1024 * 1024, 7094),  # 3 GiB: sqrt(50331648) = 7094.5, rounded down
    (16 * 1024 * 1024, 16384),  # 16 GiB: sqrt(268435456)
    (512, 128),  # 512 KiB: sqrt(8192) = 90, raised to the floor
    (1024, 128),  # 1 MiB: sqrt(16384) = 128, the floor exactly
    (4 << 30, 262144),  # 4 TiB: sqrt(2**36) = 2**18, the ceiling exactly
    (16 << 30, 262144),  # 16 TiB: 2**19, cut to the ceiling
])
def test_min_free_kbytes(memory_kib: int, kib: int) -> None:
    assert min_free_kbytes(memory_kib) == kib
    assert emergency_bytes(memory_kib * 1024) == kib * 1024


@pytest.mark.parametrize(("free", "reserve", "allowed"), [
    # wmark_ok = free_pages > pfmemalloc_reserve / 2 (integer division)
    (129, 256, True), (128, 256, False), (0, 256, False),
    (3, 5, True), (2, 5, False),  # 5 / 2 = 2
    (0, 0, True),  # no reserve: nothing to keep (none, throttle, reserve)
])
def test_direct_reclaim_stops_at_half_the_reserve(free: int, reserve: int,
                                                  allowed: bool) -> None:
    assert allow_direct_reclaim(free, reserve) is allowed


def test_the_demos_mempool_pool_is_the_min_watermark_of_its_arena() -> None:
    config = DemoConfig()
    assert config.arena_bytes == 4 << 20
    assert config.arena_for(Policy.MEMPOOL).emergency == 256 * 1024
    assert config.arena_for(Policy.THROTTLE).emergency == 0


class GatedDevice(ModelDevice):
    """Writes wait for the gate: pages taken by writeback stay under writeback."""

    def __init__(self, arena: Arena, size: int) -> None:
        super().__init__(arena, size)
        self.gate = asyncio.Event()

    async def write_pages(self, offset: int, pages: list[memoryview], *, owner: str) -> None:
        await self.gate.wait()
        await super().write_pages(offset, pages, owner=owner)


async def end(cache: PageCache, device: GatedDevice, writer: asyncio.Task[None]) -> None:
    """Cancel the writer, open the device's gate and close the cache."""
    writer.cancel()
    device.gate.set()
    await asyncio.gather(writer, return_exceptions=True)
    await cache.close()


def test_the_page_cache_counts_pages_under_writeback_as_dirty() -> None:
    """balance_dirty_pages compares NR_FILE_DIRTY + NR_WRITEBACK with the threshold. A 1 MiB
    arena at 20 % is int(209715.2) // 4096 = 51 pages. 30 pages go to writeback (and stay:
    the device's gate is shut); a second writer looks after 14 pages (the shared counter,
    16, counts 2 left from the first), then at the margin's square root, 2, 2, 1, 1, 1, 1:
    at 52 pages dirty or in writeback it waits."""

    async def main() -> tuple[int, bool]:
        arena = Arena(1 << 20)
        device = GatedDevice(arena, 8 << 20)
        cache = PageCache(arena, device, Policy.THROTTLE)
        cache.start()
        await cache.pwrite(0, bytes(30 * PAGE_BYTES), owner="first")
        assert await wait_for(lambda: not cache.dirty and cache.inflight == 1)
        writer = asyncio.create_task(
            cache.pwrite(100 * PAGE_BYTES, bytes(200 * PAGE_BYTES), owner="w"))
        throttled = await wait_for(lambda: any(
            w.waiter == "w" and w.kind is WaitKind.AGENT for w in arena.waits.waits()))
        pages = len(cache.pages)
        await end(cache, device, writer)
        return pages, throttled

    pages, throttled = asyncio.run(main())
    assert throttled, "the writer never waited for the dirty count"
    assert pages == 52


@pytest.mark.parametrize(("pool_in_use", "reclaims"), [(2 * 1024, True), (5 * 1024, False)])
def test_a_reclaimer_writes_back_only_while_half_the_pool_is_left(
        pool_in_use: int, reclaims: bool) -> None:
    """A 64 KiB arena with an 8 KiB pool, its 56 KiB of ordinary memory all dirty pages.
    A writer wants one more page: with 2 KiB of the pool in use (6 KiB free, above 4) it
    writes a dirty page back itself; with 5 KiB in use (3 KiB free) it is throttled and
    waits for memory without starting any writeback."""

    async def main() -> tuple[bool, int]:
        arena = Arena(64 * 1024, emergency=8 * 1024)
        device = GatedDevice(arena, 8 << 20)
        cache = PageCache(arena, device, Policy.MEMPOOL)  # not started: no flusher
        for i in range(14):
            await cache.pwrite(i * 2 * PAGE_BYTES, bytes(PAGE_BYTES), owner="w")
        with arena.memalloc():
            held = await arena.allocate(HostLevel.WIRE, pool_in_use, owner="receive")
        writer = asyncio.create_task(
            cache.pwrite(100 * PAGE_BYTES, bytes(PAGE_BYTES), owner="late"))
        blocked = await wait_for(lambda: cache.inflight > 0 or arena.waiting)
        started = cache.inflight
        held.free()
        await end(cache, device, writer)
        return blocked, started

    blocked, started = asyncio.run(main())
    assert blocked, "the writer neither wrote back nor waited"
    assert started == (1 if reclaims else 0)
