"""A writeback whose task is cancelled still ends as one: a writer cancelled while it
writes back for itself, or the flusher's writebacks cancelled by close. If the device
never sent the pages, they are dirty again (and, under `reserve`, booked again as the
requests they now make); if the device says the write goes on (StillInFlight), they stay
under writeback until it ends. Either way a later fsync finishes with the data on the
device and every byte of memory back. Before this, such pages stayed under writeback for
good: fsync never returned and their memory never came back."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, cast

import pytest

from earmark.host.device import StillInFlight
from earmark.host.modeldevice import ModelDevice
from earmark.host.pagecache import PageCache
from earmark.host.policy import HostTuning, Policy
from earmark.host.requests import request_cost
from earmark.memory import Arena, check_level_order
from earmark.memory.levels import PAGE_BYTES
from tests.loop_turns import wait_for

PAGES = 96
DATA = bytes(n % 251 + 1 for n in range(PAGES * PAGE_BYTES))  # no zero byte: unwritten shows


class GatedDevice(ModelDevice):
    """Writes and reads wait at the gate before they send anything: cancelled there,
    nothing of them is in flight (a plain CancelledError)."""

    def __init__(self, arena: Arena, size: int) -> None:
        super().__init__(arena, size)
        self.gate = asyncio.Event()
        self.reads = 0

    async def write_pages(self, offset: int, pages: list[memoryview], *, owner: str) -> None:
        await self.gate.wait()
        await super().write_pages(offset, pages, owner=owner)

    async def read_page(self, offset: int, page: memoryview, *, owner: str) -> None:
        self.reads += 1
        await self.gate.wait()
        await super().read_page(offset, page, owner=owner)


class InFlightDevice(GatedDevice):
    """I/O is the target's once called (as a command sent): cancelled, the caller gets
    StillInFlight and the I/O goes on, reading or filling the page, until the gate opens."""

    async def write_pages(self, offset: int, pages: list[memoryview], *, owner: str) -> None:
        await self._on(super().write_pages(offset, pages, owner=owner))

    async def read_page(self, offset: int, page: memoryview, *, owner: str) -> None:
        await self._on(super().read_page(offset, page, owner=owner))

    @staticmethod
    async def _on(io: Coroutine[Any, Any, None]) -> None:
        going = asyncio.ensure_future(io)
        try:
            await asyncio.shield(going)
        except asyncio.CancelledError:
            if going.done():
                raise
            ended: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
            going.add_done_callback(
                lambda done: ended.set_result(cast("Exception | None", done.exception())))
            raise StillInFlight(ended) from None


def expected_books(cache: PageCache) -> int:
    """One fixed part per request the dirty pages make, one increment per page."""
    cost, window = request_cost(cache.device, cache.tuning.max_request_pages), \
        cache.tuning.max_request_pages
    dirty = set(cache.dirty)
    requests = sum(1 for i in dirty if i - 1 not in dirty or i % window == 0)
    return requests * sum(cost.fixed.values()) + len(dirty) * sum(cost.per_page.values())


async def settle(cache: PageCache, arena: Arena, device: GatedDevice) -> int:
    """Open the gate, write everything back from another task, and check that all the
    memory is back: what the cache holds is its pages. The bytes the device holds of DATA."""
    device.gate.set()
    cache.start()
    sync = asyncio.ensure_future(cache.fsync(owner="syncer"))
    assert await wait_for(sync.done), "fsync never finished: pages wedged under writeback"
    sync.result()
    await cache.close()
    assert not cache.dirty and cache.inflight == 0 and cache.writeback_booked() == 0
    assert arena.committed == len(cache.pages) * arena.cost(PAGE_BYTES), arena
    written = device.snapshot(0, len(DATA))
    whole = next((n for n in range(0, len(DATA), PAGE_BYTES)
                  if written[n : n + PAGE_BYTES] != DATA[n : n + PAGE_BYTES]), len(DATA))
    assert written[whole:] == bytes(len(DATA) - whole), "a page written out of order"
    return whole


@pytest.mark.parametrize("device_type", [GatedDevice, InFlightDevice])
@pytest.mark.parametrize("policy", [Policy.RESERVE, Policy.MEMPOOL])
def test_a_writer_cancelled_in_its_own_writeback_leaves_its_pages_to_be_written(
        policy: Policy, device_type: type[GatedDevice]) -> None:
    """No flusher and too small an arena: the writer writes back for itself, and is
    cancelled while the device holds that write. Under the policies that write back
    for themselves and survive an arena full of dirty pages: under `none` the flusher
    would then wait for memory for good (the deadlock it is there to show); under
    `throttle` the writer waits at the dirty limit instead."""

    async def main() -> None:
        arena = Arena(256 * 1024, emergency=32 * 1024 if policy is Policy.MEMPOOL else 0)
        arena.validator = check_level_order
        device = device_type(arena, 1 << 20)
        cache = PageCache(arena, device, policy)
        writer = asyncio.get_running_loop().create_task(
            cache.pwrite(0, DATA, owner="w"), name="w")
        assert await wait_for(lambda: "w" in cache._writebacks), "the writer never wrote back"
        run = [p.index for p in cache.pages.values() if p.writeback]
        assert run
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        assert writer.cancelled()
        if device_type is InFlightDevice:  # the device still reads them
            assert all(cache.pages[i].writeback and i not in cache.dirty for i in run)
        else:  # never sent: dirty again, and booked again
            assert all(not cache.pages[i].writeback and i in cache.dirty for i in run)
            assert cache.writeback_booked() == (
                expected_books(cache) if policy is Policy.RESERVE else 0)
        assert await settle(cache, arena, device) > max(run) * PAGE_BYTES

    asyncio.run(main())


@pytest.mark.parametrize("device_type", [GatedDevice, InFlightDevice])
@pytest.mark.parametrize("policy", list(Policy))
def test_writebacks_cancelled_by_close_are_written_by_the_next_fsync(
        policy: Policy, device_type: type[GatedDevice]) -> None:
    async def main() -> None:
        arena = Arena(1 << 20)
        arena.validator = check_level_order
        device = device_type(arena, 1 << 20)
        cache = PageCache(arena, device, policy, HostTuning(background_ratio=0.0,
                                                            max_request_pages=4))
        cache.start()
        await cache.pwrite(0, DATA[: 10 * PAGE_BYTES], owner="w")
        assert await wait_for(lambda: cache.inflight == 3)  # 4 + 4 + 2 pages
        await cache.close()
        if device_type is GatedDevice:
            assert len(cache.dirty) == 10 and cache.inflight == 0
            assert cache.writeback_booked() == (
                expected_books(cache) if policy is Policy.RESERVE else 0)
        else:  # still the device's: in flight until it ends
            assert not cache.dirty and cache.inflight == 3
        assert await settle(cache, arena, device) >= 10 * PAGE_BYTES

    asyncio.run(main())


@pytest.mark.parametrize("device_type", [GatedDevice, InFlightDevice])
@pytest.mark.parametrize("policy", list(Policy))
def test_a_reader_cancelled_in_its_read_gives_the_page_back_once_the_device_is_done(
        policy: Policy, device_type: type[GatedDevice]) -> None:
    """The page being read into, and (under `reserve`) the read's share, go back at the
    cancel if the read never went out, else when the device is done writing into it."""

    async def main() -> None:
        arena = Arena(1 << 20)
        arena.validator = check_level_order
        device = device_type(arena, 1 << 20)
        cache = PageCache(arena, device, policy)
        reader = asyncio.ensure_future(cache.pread(5 * PAGE_BYTES, PAGE_BYTES, owner="r"))
        assert await wait_for(lambda: device.reads == 1)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        assert reader.cancelled() and 5 not in cache.pages
        assert (arena.committed > 0) is (device_type is InFlightDevice)  # the device's yet
        device.gate.set()
        assert await wait_for(lambda: arena.committed == 0), arena
        assert await cache.pread(5 * PAGE_BYTES, PAGE_BYTES, owner="r") == bytes(PAGE_BYTES)

    asyncio.run(main())


@pytest.mark.parametrize("device_type", [GatedDevice, InFlightDevice])
@pytest.mark.parametrize("policy", [Policy.RESERVE, Policy.NONE])
def test_a_cancelled_msync_leaves_its_stores_to_the_next_one(
        policy: Policy, device_type: type[GatedDevice]) -> None:
    """Whether or not they went out, the pages it was writing count as stored into
    again: the next msync writes them (else, never sent, they would wait for unmap)."""

    async def main() -> None:
        arena = Arena(1 << 20)
        arena.validator = check_level_order
        device = device_type(arena, 1 << 20)
        cache = PageCache(arena, device, policy)
        device.gate.set()  # the map's reads pass; the msync's write waits
        mapped = await cache.map(0, 4 * PAGE_BYTES, owner="m")
        device.gate.clear()
        mapped.views[1][:] = DATA[:PAGE_BYTES]
        sync = asyncio.ensure_future(mapped.msync())
        assert await wait_for(lambda: "m:msync-1" in cache._writebacks)
        sync.cancel()
        await asyncio.gather(sync, return_exceptions=True)
        assert sync.cancelled()
        device.gate.set()
        again = asyncio.ensure_future(mapped.msync())
        assert await wait_for(again.done), "the second msync never finished"
        again.result()
        assert device.snapshot(PAGE_BYTES, PAGE_BYTES) == DATA[:PAGE_BYTES]
        assert cache.inflight == 0 and not any(p.writeback for p in mapped.pages)
        await mapped.unmap()
        assert arena.committed == len(cache.pages) * arena.cost(PAGE_BYTES), arena

    asyncio.run(main())


def test_a_writeback_put_back_joins_the_dirty_pages_beside_it_in_one_request() -> None:
    """Pages 1-2 go to writeback; 0 and 3 become dirty meanwhile, each a request of its
    own. Put back, 1-2 bridge them: the books hold one fixed part for 0-3, not three."""

    async def main() -> None:
        arena = Arena(1 << 20)
        arena.validator = check_level_order
        device = GatedDevice(arena, 1 << 20)
        cache = PageCache(arena, device, Policy.RESERVE, HostTuning(
            background_ratio=0.0, max_request_pages=4, writeback_depth=1))
        cache.start()
        await cache.pwrite(PAGE_BYTES, DATA[PAGE_BYTES : 3 * PAGE_BYTES], owner="w")
        assert await wait_for(lambda: cache.inflight == 1)
        for index in (0, 3):
            await cache.pwrite(index * PAGE_BYTES, DATA[index * PAGE_BYTES :][:PAGE_BYTES],
                               owner="w")
        await cache.close()
        assert sorted(cache.dirty) == [0, 1, 2, 3]
        assert cache.writeback_booked() == expected_books(cache)
        assert await settle(cache, arena, device) >= 4 * PAGE_BYTES

    asyncio.run(main())
