"""Mapped pages: under `reserve` a writable mapping holds its writeback from map time,
so stores need nothing and msync always goes through, however full the arena; a
read-only one holds no writeback; under `none` mapped writers deadlock, by name."""

from __future__ import annotations

import asyncio
import zlib

import pytest

from earmark.host.modeldevice import ModelDevice
from earmark.host.pagecache import PageCache
from earmark.host.policy import HostTuning, Policy
from earmark.host.requests import request_cost
from earmark.memory import Arena, check_level_order
from earmark.memory.levels import PAGE_BYTES
from earmark.sim.workload import Workload, run_writers

QUIET = HostTuning(background_ratio=1.0, dirty_expire_s=3600.0, max_request_pages=4)


def share_per_page(device: ModelDevice) -> int:
    cost = request_cost(device, QUIET.max_request_pages)
    return sum(cost.fixed.values()) + sum(cost.per_page.values())


def test_mapped_stores_reach_the_device_at_msync_while_writers_fill_the_arena() -> None:
    async def main() -> None:
        arena = Arena(256 * 1024)
        arena.validator = check_level_order
        device = ModelDevice(arena, 8 << 20, latency=0.002)
        cache = PageCache(arena, device, Policy.RESERVE)
        cache.start()
        stop, full = asyncio.Event(), asyncio.Event()
        dirtied = 0

        async def filler(w: int) -> None:
            nonlocal dirtied
            n = 0
            while not stop.is_set():
                index = 64 + w * 128 + n % 128
                await cache.pwrite(index * PAGE_BYTES, bytes([w]) * PAGE_BYTES,
                                   owner=f"filler-{w}")
                n += 1
                dirtied += 1
                if dirtied >= 200 and arena.available() <= 8 * 1024:  # the arena is full
                    full.set()

        fillers = [asyncio.ensure_future(filler(w)) for w in range(8)]
        async with asyncio.timeout(30):
            await full.wait()
        mapped = await cache.map(4 * PAGE_BYTES, 4 * PAGE_BYTES, owner="mapper")
        page_claim = arena.cost(PAGE_BYTES) + share_per_page(device)
        blocked = 0
        assert mapped.share is not None
        held = mapped.share.total()
        assert held == 4 * share_per_page(device)
        for generation in range(6):
            for n, view in enumerate(mapped.views):
                if (n + generation) % 3:  # some pages each time, not always the same
                    view[:] = bytes([16 * generation + n]) * PAGE_BYTES
            expected = b"".join(bytes(view) for view in mapped.views)
            # The fillers' next page cannot be granted: memory is all pages, dirty or
            # under writeback, and clean ones about to be taken.
            blocked += arena.available() < page_claim
            await mapped.msync()
            assert device.snapshot(4 * PAGE_BYTES, 4 * PAGE_BYTES) == expected
            assert mapped.share.total() == held  # what msync drew came back
        assert blocked >= 3
        await mapped.unmap()
        stop.set()
        await asyncio.gather(*fillers)
        await cache.fsync(owner="mapper")
        assert device.snapshot(4 * PAGE_BYTES, 4 * PAGE_BYTES) == expected
        await cache.close()
        assert arena.high_water <= arena.capacity

    asyncio.run(main())


def test_a_read_only_mapping_reserves_no_writeback_and_cannot_be_stored_into() -> None:
    async def main() -> None:
        arena = Arena(1 << 20)
        device = ModelDevice(arena, 1 << 20)
        await device.write_pages(0, [memoryview(b"r" * PAGE_BYTES)], owner="t")
        cache = PageCache(arena, device, Policy.RESERVE, QUIET)
        page = arena.cost(PAGE_BYTES)
        reader = await cache.map(0, 3 * PAGE_BYTES, writable=False, owner="r")
        assert reader.share is None
        assert arena.committed == 3 * page  # the pages, their reads gone back, no writeback
        assert bytes(reader.views[0]) == b"r" * PAGE_BYTES
        with pytest.raises(TypeError):
            reader.views[0][0] = 1
        await reader.msync()
        await reader.unmap()
        writer = await cache.map(0, 3 * PAGE_BYTES, owner="w")  # cached now: shares only
        assert arena.committed == 3 * page + 3 * share_per_page(device)
        await writer.unmap()  # nothing stored: all of it goes back
        assert arena.committed == 3 * page and not cache.dirty

    asyncio.run(main())


def test_unmap_books_the_changed_pages_as_dirty_and_gives_the_rest_back() -> None:
    async def main() -> None:
        arena = Arena(1 << 20)
        arena.validator = check_level_order
        device = ModelDevice(arena, 1 << 20)
        cache = PageCache(arena, device, Policy.RESERVE, QUIET)
        cost = request_cost(device, QUIET.max_request_pages)
        await cache.pwrite(5 * PAGE_BYTES, b"p" * PAGE_BYTES, owner="w")  # already dirty
        mapped = await cache.map(0, 8 * PAGE_BYTES, owner="m")
        for n in (1, 2, 5, 6):  # two requests (1-2; 5 was dirty, 6 joins it)
            mapped.views[n][:] = bytes([n]) * PAGE_BYTES
        await mapped.unmap()
        assert sorted(cache.dirty) == [1, 2, 5, 6]
        booked = 2 * sum(cost.fixed.values()) + 4 * sum(cost.per_page.values())
        assert cache.writeback_booked() == booked
        assert arena.committed == 8 * arena.cost(PAGE_BYTES) + booked
        assert len(cache.clean) == 4  # the unmapped clean pages may be evicted again
        cache.start()
        await cache.fsync(owner="m")
        assert device.snapshot(0, 8 * PAGE_BYTES) == b"".join(
            bytes([n if n in (1, 2, 5, 6) else 0]) * PAGE_BYTES for n in range(8))
        await cache.close()

    asyncio.run(main())


def test_mapped_pages_stay_cached_while_readers_evict_everything_else() -> None:
    async def main() -> None:
        arena = Arena(64 * 1024)
        device = ModelDevice(arena, 1 << 20)
        cache = PageCache(arena, device, Policy.RESERVE, QUIET)
        await cache.pread(0, 1, owner="r")  # page 0 cached (and evictable) before
        mapped = await cache.map(0, 2 * PAGE_BYTES, writable=False, owner="m")
        for index in range(2, 64):
            await cache.pread(index * PAGE_BYTES, 1, owner="r")
        assert 0 in cache.pages and 1 in cache.pages and 2 not in cache.pages
        await mapped.unmap()
        for index in range(2, 64):
            await cache.pread(index * PAGE_BYTES, 1, owner="r")
        assert 0 not in cache.pages

    asyncio.run(main())


@pytest.mark.parametrize("policy", [Policy.NONE, Policy.RESERVE])
def test_mapped_writers_deadlock_under_none_and_complete_under_reserve(policy: Policy) -> None:
    async def main() -> tuple[str, str | None, bool]:
        arena = Arena(512 * 1024)
        if policy is Policy.RESERVE:
            arena.validator = check_level_order
        device = ModelDevice(arena, 8 << 20, latency=0.001)
        work = Workload(32, 16, (8 << 20) // PAGE_BYTES // 4, stall_s=5, mapped=True)
        result = await run_writers(arena, device, policy, work)
        verified = all(zlib.crc32(device.snapshot(i * PAGE_BYTES, PAGE_BYTES)) == crc
                       for i, crc in result.expected.items())
        return result.outcome, result.cycle, verified

    outcome, cycle, verified = asyncio.run(main())
    if policy is Policy.NONE:
        assert outcome == "deadlocked" and cycle is not None and "writer-" in cycle
        assert "watchdog" not in cycle
    else:
        assert outcome == "completed" and verified


def test_an_unmapped_mapping_refuses_to_be_used_again() -> None:
    async def main() -> None:
        arena = Arena(1 << 20)
        cache = PageCache(arena, ModelDevice(arena, 1 << 20), Policy.RESERVE, QUIET)
        mapped = await cache.map(0, 1, owner="m")
        await mapped.unmap()
        assert mapped.views == []
        with pytest.raises(ValueError, match="unmapped"):
            await mapped.msync()
        with pytest.raises(ValueError, match="unmapped"):
            await mapped.unmap()
        assert arena.committed == arena.cost(PAGE_BYTES)  # the page, cached, nothing else

    asyncio.run(main())
