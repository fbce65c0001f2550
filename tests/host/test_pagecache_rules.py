"""The page cache's and the model device's own rules, each on a small cache with no
latency: how writeback merges pages, when it starts, what fsync leaves behind, which
clean page goes first, and that a command's cost is exactly what its path draws.

Written against the mutants benchmarks/mutation.py found alive in host/.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from earmark.host.modeldevice import ModelDevice
from earmark.host.pagecache import PageCache
from earmark.host.policy import HostTuning, Policy
from earmark.memory import Arena, HostLevel, OverdrawError
from earmark.memory.levels import PAGE_BYTES
from earmark.sim.virtualtime import run_virtual

KIB = 1024
#: Writeback only when asked (fsync) or when the test says: no background threshold,
#: no expiry.
QUIET = HostTuning(background_ratio=1.0, dirty_expire_s=3600.0)


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def until(done: Callable[[], bool]) -> None:
    for _ in range(10_000):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("the cache never got there")


def run_cache(test: Callable[[PageCache, ModelDevice], Awaitable[None]], *,
              arena: int = 1 << 20, policy: Policy = Policy.RESERVE,
              tuning: HostTuning = QUIET) -> None:
    async def main() -> None:
        a = Arena(arena)
        device = ModelDevice(a, 1 << 20)
        cache = PageCache(a, device, policy, tuning)
        cache.start()
        try:
            await test(cache, device)
        finally:
            await cache.close()

    asyncio.run(main())


async def dirty(cache: PageCache, *pages: int) -> None:
    for index in pages:
        await cache.pwrite(index * PAGE_BYTES, bytes([index + 1]) * PAGE_BYTES, owner="w")


@pytest.mark.parametrize(("order", "writes"), [
    (range(10), 3),  # runs of 4, 4 and 2
    ([3, 0, 1, 2], 1),  # the oldest page is the last: the run grows downwards too
    ([0, 2], 2),  # not adjacent: not merged
])
def test_writeback_merges_adjacent_dirty_pages_up_to_the_request_limit(
        order: list[int], writes: int) -> None:
    async def test(cache: PageCache, device: ModelDevice) -> None:
        await dirty(cache, *order)
        assert device.writes == 0
        await cache.fsync(owner="w")
        assert device.writes == writes
        for index in order:
            assert device.snapshot(index * PAGE_BYTES, PAGE_BYTES) == bytes([index + 1]) * 4096

    run_cache(test, tuning=HostTuning(background_ratio=1.0, dirty_expire_s=3600.0,
                                      max_request_pages=4))


def test_background_writeback_starts_only_above_the_background_share() -> None:
    async def test(cache: PageCache, device: ModelDevice) -> None:
        await dirty(cache, 0, 2, 4, 6)  # exactly the share: 16 KiB of 128 KiB
        await settle()
        assert device.writes == 0 and cache.stats()["dirty"] == 4
        await dirty(cache, 8)
        await until(lambda: device.writes > 0)

    run_cache(test, arena=128 * KIB,
              tuning=HostTuning(background_ratio=0.125, dirty_expire_s=3600.0))


def test_an_expired_dirty_page_is_written_back_with_nothing_else_to_wake_the_flusher() -> None:
    """The idle flusher looks again every second, on the loop's clock (virtual here): a
    page dirty for longer than dirty_expire_s goes out though no threshold is crossed."""
    async def main() -> tuple[int, int]:
        a = Arena(1 << 20)
        device = ModelDevice(a, 1 << 20)
        cache = PageCache(a, device, Policy.RESERVE,
                          HostTuning(background_ratio=1.0, dirty_expire_s=2.0))
        cache.start()
        try:
            await dirty(cache, 3)
            await asyncio.sleep(1.5)  # virtual: looked at 1 s, not expired yet
            before = device.writes
            await asyncio.sleep(1.0)  # looked at 2 s: expired, written back
            return before, device.writes
        finally:
            await cache.close()

    assert run_virtual(main) == (0, 1)


def test_after_fsync_new_dirty_pages_wait_for_their_own_writeback() -> None:
    async def test(cache: PageCache, device: ModelDevice) -> None:
        await dirty(cache, 0, 1)
        await asyncio.gather(cache.fsync(owner="a"), cache.fsync(owner="b"))
        assert cache.stats() == {"pages": 2, "dirty": 0, "clean": 2,
                                 "writeback_inflight": 0, "device_writes": 1}
        await dirty(cache, 5)
        await settle()
        assert cache.stats() == {"pages": 3, "dirty": 1, "clean": 2,
                                 "writeback_inflight": 0, "device_writes": 1}

    run_cache(test)


def test_the_least_recently_read_clean_page_is_evicted_first() -> None:
    async def test(cache: PageCache, device: ModelDevice) -> None:
        for index in range(3):
            await cache.pread(index * PAGE_BYTES, 1, owner="r")
        full = set(cache.pages)
        await cache.pread(0, 1, owner="r")  # page 0 is the most recent now
        for index in range(3, 20):  # until the first eviction
            await cache.pread(index * PAGE_BYTES, 1, owner="r")
            if not full <= set(cache.pages):
                break
        assert 0 in cache.pages and 1 not in cache.pages

    run_cache(test, arena=24 * KIB)


def test_pages_read_back_what_was_written_through_the_cache() -> None:
    async def test(cache: PageCache, device: ModelDevice) -> None:
        await cache.pwrite(100, b"x" * 5000, owner="w")  # two pages, both partial
        assert await cache.pread(0, 5200, owner="r") == bytes(100) + b"x" * 5000 + bytes(100)
        await cache.fsync(owner="w")
        assert device.snapshot(0, 5200) == bytes(100) + b"x" * 5000 + bytes(100)

    for policy in Policy:
        run_cache(test, policy=policy)


@pytest.mark.parametrize(("write", "nbytes"), [(True, 24 * KIB), (False, 24 * KIB),
                                               (True, 4 * KIB), (False, 4 * KIB)])
def test_a_commands_cost_is_exactly_what_its_path_draws(write: bool, nbytes: int) -> None:
    async def main() -> None:
        arena = Arena(1 << 20)
        device = ModelDevice(arena, 1 << 20, max_recv_segment=8 * KIB, max_burst=8 * KIB)
        cost = dict(device.command_cost(write, nbytes))
        pdus = nbytes // (8 * KIB) or 1
        # Command and Data-Out headers; R2Ts (one per burst) or Data-In, and the response.
        assert cost == {HostLevel.TASK: 64 + (64 * pdus if write else 0),
                        HostLevel.WIRE: 64 + 64 * pdus}
        data = [memoryview(bytes([7]) * nbytes)]

        async def command(claim: dict[int, int]) -> None:
            res = await arena.reserve(claim, owner="cmd")
            try:
                with res.active():
                    if write:
                        await device.write_pages(8192, data, owner="cmd")
                    else:
                        await device.read_page(8192, memoryview(bytearray(nbytes)), owner="cmd")
            finally:
                res.release()

        await command(cost)
        for level, short in ((HostLevel.TASK, 1), (HostLevel.WIRE, 64)):
            with pytest.raises(OverdrawError):
                await command({**cost, level: cost[level] - short})
        assert arena.committed == 0
        if write:
            assert device.writes == 1 and device.snapshot(8192, nbytes) == bytes([7]) * nbytes

    asyncio.run(main())


@pytest.mark.parametrize("policy", list(Policy))
def test_a_page_not_in_the_cache_is_read_from_the_device(policy: Policy) -> None:
    async def test(cache: PageCache, device: ModelDevice) -> None:
        await device.write_pages(3 * PAGE_BYTES, [memoryview(b"d" * PAGE_BYTES)], owner="t")
        assert await cache.pread(3 * PAGE_BYTES + 10, 20, owner="r") == b"d" * 20
        await cache.pwrite(3 * PAGE_BYTES, b"new", owner="w")  # a cached page: no read
        assert await cache.pread(3 * PAGE_BYTES, 5, owner="r") == b"newdd"

    run_cache(test, policy=policy)
