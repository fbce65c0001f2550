"""`reserve`'s writeback books: one fixed part per request writeback can form, one
increment per dirty page, exact through every way a run starts, grows, bridges,
splits at the request limit and leaves (writeback, fsync, a failed write); and the
split of a command's cost into those two parts covers every request length."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from earmark.host.modeldevice import ModelDevice
from earmark.host.pagecache import PageCache
from earmark.host.policy import HostTuning, Policy
from earmark.host.requests import request_cost
from earmark.memory import Arena, HostLevel, check_level_order
from earmark.memory.levels import PAGE_BYTES, REQUEST_DESCRIPTOR_BYTES

LIMIT = 4
TUNING = HostTuning(background_ratio=1.0, dirty_expire_s=3600.0, max_request_pages=LIMIT)


def requests_of(dirty: set[int]) -> int:
    """Maximal runs of dirty pages inside each aligned window of LIMIT pages, counted
    here from scratch."""
    return sum(1 for i in dirty if i - 1 not in dirty or i % LIMIT == 0)


def expected_books(cache: PageCache) -> int:
    cost = request_cost(cache.device, LIMIT)
    dirty = set(cache.dirty)
    return (requests_of(dirty) * sum(cost.fixed.values())
            + len(dirty) * sum(cost.per_page.values()))


def run_books(test: Callable[[PageCache, ModelDevice, Callable[[], None]], Awaitable[None]],
              device_type: type[ModelDevice] = ModelDevice) -> None:
    async def main() -> None:
        arena = Arena(1 << 20)
        arena.validator = check_level_order
        device = device_type(arena, 1 << 20, max_recv_segment=PAGE_BYTES)
        cache = PageCache(arena, device, Policy.RESERVE, TUNING)
        cache.start()

        def exact() -> None:
            assert cache.writeback_booked() == expected_books(cache)
            if not cache.inflight:  # else its request holds a reservation of its own
                pages = len(cache.pages) * arena.cost(PAGE_BYTES)
                assert arena.committed == pages + cache.writeback_booked()

        try:
            await test(cache, device, exact)
        finally:
            await cache.close()
        assert arena.high_water <= arena.capacity

    asyncio.run(main())


async def write(cache: PageCache, index: int, fill: int = 1) -> None:
    await cache.pwrite(index * PAGE_BYTES, bytes([fill]) * PAGE_BYTES, owner="w")


@pytest.mark.parametrize("order", [
    [0, 1, 2, 3],  # each page joins the run on its left
    [3, 2, 1, 0],  # ... on its right
    [0, 2, 1],  # page 1 bridges two requests into one
    [3, 4],  # adjacent, but across the request limit: two requests
    [1, 5, 9, 0, 4, 8, 2, 6, 3, 7],  # every way at once, over three windows
    [0, 1, 0, 1],  # rewriting a dirty page changes nothing
])
def test_the_books_hold_one_fixed_part_per_request_and_one_increment_per_page(
        order: list[int]) -> None:
    async def test(cache: PageCache, device: ModelDevice, exact: Callable[[], None]) -> None:
        for index in order:
            await write(cache, index)
            exact()
        await cache.fsync(owner="w")
        exact()
        assert cache.writeback_booked() == 0
        assert device.writes == requests_of(set(order))

    run_books(test)


def test_a_page_written_under_writeback_starts_a_new_request_afterwards() -> None:
    async def test(cache: PageCache, device: ModelDevice, exact: Callable[[], None]) -> None:
        for index in (0, 1):
            await write(cache, index)
        sync = asyncio.ensure_future(cache.fsync(owner="s"))
        while not cache.inflight:
            await asyncio.sleep(0)
        await write(cache, 2)  # beside pages under writeback: its own request
        exact()
        await write(cache, 1, fill=2)  # waits for that writeback, then joins page 2
        exact()
        await sync
        await cache.fsync(owner="s")
        exact()
        assert device.snapshot(PAGE_BYTES, PAGE_BYTES) == bytes([2]) * PAGE_BYTES

    run_books(test)


def test_a_partial_write_reserves_a_fixed_part_and_gives_it_back_when_it_joins() -> None:
    async def test(cache: PageCache, device: ModelDevice, exact: Callable[[], None]) -> None:
        await write(cache, 0)
        await cache.pwrite(PAGE_BYTES + 10, b"x", owner="w")  # read first, then joins 0
        exact()
        assert requests_of(set(cache.dirty)) == 1

    run_books(test)


class GatedReads(ModelDevice):
    """Reads that wait for the test: what becomes dirty meanwhile is the test's choice."""

    def __init__(self, arena: Arena, size: int, **options: int) -> None:
        super().__init__(arena, size, **options)
        self.reading = asyncio.Event()
        self.gate = asyncio.Event()

    async def read_page(self, offset: int, page: memoryview, *, owner: str) -> None:
        self.reading.set()
        await self.gate.wait()
        await super().read_page(offset, page, owner=owner)


def test_a_partial_write_books_the_neighbours_its_read_found_dirty_when_it_ended() -> None:
    async def test(cache: PageCache, device: ModelDevice, exact: Callable[[], None]) -> None:
        assert isinstance(device, GatedReads)
        partial = asyncio.ensure_future(cache.pwrite(10, b"x", owner="p"))  # reads page 0
        await device.reading.wait()
        await write(cache, 1)  # starts a request while page 0 is read
        device.gate.set()
        await partial  # page 0 joins it: its fixed part goes back
        exact()
        assert requests_of(set(cache.dirty)) == 1

    run_books(test, GatedReads)


class FailingDevice(ModelDevice):
    async def write_pages(self, offset: int, pages: list[memoryview], *, owner: str) -> None:
        raise OSError("medium error")


def test_a_failed_writeback_gives_its_whole_request_back() -> None:
    async def test(cache: PageCache, device: ModelDevice, exact: Callable[[], None]) -> None:
        for index in (0, 1, 5):
            await write(cache, index)
        with pytest.raises(OSError):
            await cache.fsync(owner="w")
        exact()
        assert cache.writeback_booked() == 0 and not cache.dirty

    run_books(test, FailingDevice)


@pytest.mark.parametrize(("segment", "burst"), [(4096, 8192), (8192, 262144), (4096, 4096)])
def test_a_requests_fixed_part_and_increments_cover_every_length(segment: int,
                                                                   burst: int) -> None:
    arena = Arena(1 << 20)
    device = ModelDevice(arena, 1 << 20, max_recv_segment=segment, max_burst=burst)
    cost = request_cost(device, 32)
    tight = False
    for pages in range(1, 33):
        need = dict(device.command_cost(True, pages * PAGE_BYTES))
        need[HostLevel.REQUEST] = REQUEST_DESCRIPTOR_BYTES
        booked = cost.of(pages)
        assert all(booked.get(lvl, 0) >= n for lvl, n in need.items()), (pages, booked, need)
        tight = tight or booked == need
    assert tight  # and no more than some length needs
    # A page's increment is its Data-Out header (and its R2T, with a burst a page long):
    # far below a whole command's share.
    assert sum(cost.per_page.values()) <= 128 < sum(cost.fixed.values())


class CountingDevice(ModelDevice):
    busy = 0
    most = 0

    async def write_pages(self, offset: int, pages: list[memoryview], *, owner: str) -> None:
        self.busy += 1
        self.most = max(self.most, self.busy)
        try:
            await super().write_pages(offset, pages, owner=owner)
        finally:
            self.busy -= 1


def test_writers_that_would_wait_write_back_themselves_beside_the_flusher() -> None:
    async def main() -> int:
        arena = Arena(128 * 1024)
        arena.validator = check_level_order
        device = CountingDevice(arena, 1 << 20, latency=0.002)
        cache = PageCache(arena, device, Policy.RESERVE,
                          HostTuning(writeback_depth=1, max_request_pages=1))
        cache.start()

        async def writer(w: int) -> None:
            for n in range(16):
                await cache.pwrite((w * 32 + n * 2) * PAGE_BYTES, b"w" * PAGE_BYTES,
                                   owner=f"writer-{w}")

        await asyncio.gather(*(writer(w) for w in range(8)))
        await cache.fsync(owner="w")
        await cache.close()
        return device.most

    assert asyncio.run(main()) > 1  # the flusher alone has one slot


def test_a_new_page_written_whole_is_granted_into_the_books_and_its_eviction_frees_it() -> None:
    async def test(cache: PageCache, device: ModelDevice, exact: Callable[[], None]) -> None:
        arena = cache.arena
        await cache.pwrite(0, bytes(PAGE_BYTES), owner="w")  # no books yet: its own
        first = cache.pages[0]
        assert first.memory is not None and first.buf.reservation is first.memory
        await cache.pwrite(8 * PAGE_BYTES, bytes(PAGE_BYTES), owner="w")
        second = cache.pages[8]
        books = cache._books
        assert second.memory is None and books is not None
        assert second.buf.reservation is books  # drawn from the books themselves
        assert len(arena.reservations_of("cache")) == 2  # the books and the first page's
        exact()
        await cache.fsync(owner="w")  # every page clean: the books go
        assert cache._books is None and cache.writeback_booked() == 0
        while cache.clean:  # and then the pages, as reclaim evicts them
            cache._evict_oldest()
        assert arena.committed == 0 and arena.reservations_of("cache") == []

    run_books(test)
