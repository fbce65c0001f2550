"""The write-back page cache: where the memory deadlock lives, under each policy.

Dirty pages fill memory; cleaning them is a write to the device, which needs
memory on the way down (request, command, Data-Out headers, receive buffers).
Under `none`, `mempool` and `throttle` that memory is allocated when writeback
starts, as real kernels do, so a cache full of dirty pages can wedge itself.
Under `reserve` it was reserved when each page became dirty, at the granularity
writeback uses (host/requests.py: each page its increment, each request its fixed
part once), so writeback never waits for memory and a writer only ever waits
holding nothing.

A writer or reader that would wait for memory first writes back the oldest dirty
request itself, under every policy: direct reclaim (shrink_page_list's pageout).
Under `reserve` it does so on that request's reservation, holding nothing of its
own, so it still never waits for memory; without it reserve's writeback would be
the flusher's few slots alone while the other policies' grows with their writers.

Owners in the arena's books: each writer or reader by name while it waits;
"cache" for the pages (a passive holder, freed only by writeback and reclaim);
"flusher" for background writeback.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from functools import partial

from earmark.host.device import PageDevice, StillInFlight
from earmark.host.dirty_throttle import DirtyThrottle
from earmark.host.mapping import MappedPages
from earmark.host.policy import HostTuning, Policy
from earmark.host.requests import (
    add_claims,
    dirty_neighbours,
    request_cost,
    run_around,
    runs_of,
)
from earmark.host.tick import Tick
from earmark.memory import Arena, Buffer, Charge, HostLevel, Reservation
from earmark.memory.claim import Claim
from earmark.memory.draw import draw_charge
from earmark.memory.levels import PAGE_BYTES, REQUEST_DESCRIPTOR_BYTES

CACHE = "cache"
FLUSHER = "flusher"


class Page:
    __slots__ = ("buf", "dirtied_at", "dirty", "index", "mapped", "memory", "view",
                 "writeback")

    def __init__(self, index: int, buf: Buffer, memory: Reservation | None) -> None:
        self.index = index
        self.buf = buf
        #: The buffer's one view, looked up once (every write and writeback of it uses it).
        self.view = buf.view
        #: Under `reserve`: the reservation the page's own buffer was taken from, when it
        #: is the page's own (None: the cache's books, or the policy reserves nothing).
        self.memory = memory
        self.dirty = False
        self.writeback = False
        self.dirtied_at = 0.0
        #: Mappings that hold the page: it stays cached (never evicted) while any does.
        self.mapped = 0


class PageCache:
    def __init__(
        self,
        arena: Arena,
        device: PageDevice,
        policy: Policy,
        tuning: HostTuning | None = None,
    ) -> None:
        if device.size % PAGE_BYTES:
            raise ValueError(f"device size {device.size} B is not a multiple of the page size")
        self.arena = arena
        self.device = device
        self.policy = policy
        self.tuning = tuning or HostTuning()
        self.pages: dict[int, Page] = {}
        self.clean: OrderedDict[int, Page] = OrderedDict()  # LRU first
        self.dirty: OrderedDict[int, Page] = OrderedDict()  # oldest dirtied first
        # A page is in `dirty` exactly while it is dirty and not under writeback (taking
        # it for writeback takes it out): what request merging asks of a neighbour, so
        # the dict answers it itself, with no Python frame per neighbour.
        self._is_dirty = self.dirty.__contains__
        #: How many requests page `index` joins if it becomes dirty now (0: it starts
        #: one): a partial, not a method, so the look costs no frame of ours.
        self._joins: partial[int] = partial(
            dirty_neighbours, is_dirty=self._is_dirty,
            max_pages=self.tuning.max_request_pages)
        self.inflight = 0
        self._writeback_pages = 0  # pages taken by writebacks not yet clean (NR_WRITEBACK)
        self._changed = asyncio.Event()  # a page became clean, or writeback finished
        self._kick = asyncio.Event()
        self._tick = Tick(self._kick.set)  # the flusher's look at the pages' age
        self._sync_wanted = 0
        self._flusher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._throttle: DirtyThrottle | None = None
        #: More dirty pages than this and background writeback starts (dirty_background_ratio).
        self._background_pages = self.tuning.background_ratio * arena.capacity / PAGE_BYTES
        if policy is Policy.THROTTLE:
            thresh = int(self.tuning.dirty_ratio * arena.capacity) // PAGE_BYTES
            self._throttle = DirtyThrottle(thresh)
        self._cost = cost = request_cost(device, self.tuning.max_request_pages)
        # Built once, not per page: one request of k pages; one page's share, with the
        # fixed part or not; n fixed parts.
        self._request_books = [arena.claim(cost.of(k))
                               for k in range(self.tuning.max_request_pages + 1)]
        self._page_books = (arena.claim(cost.of(1, runs=0)), arena.claim(cost.of(1)))
        self._fixed_books = [arena.claim(cost.of(0, runs=n)) for n in range(3)]
        page: dict[int, int] = {HostLevel.PAGE: arena.cost(PAGE_BYTES)}
        read = device.command_cost(False, PAGE_BYTES)
        #: Under `reserve`: what writeback will draw on for the dirty pages, all in one:
        #: each request's fixed part and each page's increment (`writeback_booked`).
        self._books: Reservation | None = None
        # Dirtying a page, by (the page is new, it must be read first, it starts a request).
        self._dirty_claims: dict[tuple[bool, bool, bool], Claim] = {
            (new, reads, starts): arena.claim(add_claims(
                self._cost.per_page, self._cost.fixed if starts else {},
                page if new else {}, read if reads else {}))
            for new in (False, True) for reads in (False, True) for starts in (False, True)
            if new or not reads
        }
        self._read = read
        self._read_claim = arena.claim(add_claims(read, page))
        self._flush_claim = arena.claim(device.command_cost(False, 0))
        self._writebacks: set[str] = set()
        #: The first writeback the device failed since the last fsync (which raises it).
        self._write_error: Exception | None = None
        self._writeback_seq = 0
        arena.waits.set_passive(CACHE, freed_by=self._freers)
        if policy is not Policy.RESERVE:
            arena.reclaim = self._direct_reclaim

    def _freers(self) -> tuple[str, ...]:
        """Who can free the cache's memory now: writebacks in flight, and the flusher
        while dirty pages wait for it (clean pages go to whoever reclaims)."""
        flusher = (FLUSHER,) if self.dirty and self._flusher is not None else ()
        return (*flusher, *sorted(self._writebacks))

    # ---- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_loop(), name=FLUSHER
            )

    async def close(self) -> None:
        """Stop background writeback (dirty pages stay; call fsync first to keep them)."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
            self._tick.cancel()
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    # ---- the file-like API ---------------------------------------------------------

    async def pwrite(self, offset: int, data: bytes | memoryview, *, owner: str) -> None:
        self._check_range(offset, len(data))
        src = memoryview(data).cast("B")
        size = len(src)
        pos = 0
        while pos < size:
            index, at = divmod(offset + pos, PAGE_BYTES)
            n = min(PAGE_BYTES - at, size - pos)
            # The page, dirty (written out here, not a coroutine of its own: every
            # write of every page comes this way); looked for again after any wait.
            while True:
                page = self.pages.get(index)
                if page is not None and page.writeback:
                    await self._wait_changed(owner, f"writeback of page {index}")
                elif page is not None and page.dirty:
                    break
                elif self.policy is Policy.RESERVE:
                    page = await self._reserve_dirty(index, n == PAGE_BYTES, owner)
                    if page is not None:
                        break
                else:
                    if page is None:
                        page = await self._allocate_page(index, read=n != PAGE_BYTES,
                                                         owner=owner)
                    if page is not None:
                        self._mark_dirty(page, owner)
                        break
            page.view[at : at + n] = src[pos : pos + n]
            pos += n
            if self._throttle is not None:
                await self._balance_dirty_pages(owner)

    async def pread(self, offset: int, length: int, *, owner: str) -> bytes:
        self._check_range(offset, length)
        out = bytearray(length)
        pos = 0
        while pos < length:
            index, at = divmod(offset + pos, PAGE_BYTES)
            n = min(PAGE_BYTES - at, length - pos)
            page = await self._cached_page(index, owner=owner)
            out[pos : pos + n] = page.view[at : at + n]
            pos += n
        return bytes(out)

    async def fsync(self, *, owner: str) -> None:
        """Every page dirtied before the call is on the device, and the device flushed."""
        self._sync_wanted += 1
        try:
            # Pages taken for writeback count until they are clean, not only while their
            # writeback runs: its task counts itself in flight only once it first runs.
            while self.dirty or self.inflight or self._writeback_pages:
                self._kick.set()
                await self._wait_changed(owner, "writeback of every dirty page")
        finally:
            self._sync_wanted -= 1
        self._report_write_error()
        if self.policy is Policy.RESERVE:
            res = await self.arena.reserve(self._flush_claim, owner=owner)
            try:
                with res.active():
                    await self.device.flush(owner=owner)
            finally:
                res.release()
        else:
            await self.device.flush(owner=owner)

    def _report_write_error(self) -> None:
        """A failed writeback is said once, by the next fsync or msync, as Linux's errseq
        says it to the next fsync (msync(MS_SYNC) is an fsync of the range)."""
        error, self._write_error = self._write_error, None
        if error is not None:
            raise error

    def stats(self) -> dict[str, int]:
        return {
            "pages": len(self.pages),
            "dirty": len(self.dirty),
            "clean": len(self.clean),
            "writeback_inflight": self.inflight,
            "device_writes": getattr(self.device, "writes", -1),
        }

    # ---- mapping (host/mapping.py) ---------------------------------------------------

    async def map(self, offset: int, length: int, *, writable: bool = True,
                  owner: str) -> MappedPages:
        """The pages holding the range, mapped: cached and pinned until unmap.

        Under `reserve` all at once: the pages not cached yet with their reads and,
        when writable, every page's writeback share. Under the others each page is
        brought in as a fault would bring it, and an msync's writeback allocates as
        it goes (as page_mkwrite and writeback do)."""
        self._check_range(offset, length)
        first = offset // PAGE_BYTES
        indices = range(first, max(first, (offset + length - 1) // PAGE_BYTES) + 1)
        if self.policy is Policy.RESERVE:
            pages, share = await self._map_reserved(indices, writable, owner)
            return MappedPages(self, pages, writable, share, owner)
        pages = []
        for index in indices:
            page = await self._cached_page(index, owner=owner)
            self._pin(page)
            pages.append(page)
        return MappedPages(self, pages, writable, None, owner)

    async def _map_reserved(self, indices: range, writable: bool,
                            owner: str) -> tuple[list[Page], Reservation | None]:
        cost = self._cost
        page_claim: dict[int, int] = {HostLevel.PAGE: self.arena.cost(PAGE_BYTES)}
        share = cost.of(len(indices), runs=len(indices)) if writable else {}
        while True:
            absent = sum(i not in self.pages for i in indices)
            res = await self._admit(self.arena.claim(add_claims(
                share, *([page_claim] * absent), self._read if absent else {})), owner)
            res.revolving = True  # the reads go one after another: one read's share
            present = {i: self.pages[i] for i in indices if i in self.pages}
            if len(indices) - len(present) > absent:  # evicted while we waited
                res.release()
                continue
            for page in present.values():
                self._pin(page)
            pages = [present.get(i) or await self._map_in(i, res, page_claim, owner)
                     for i in indices]
            rest = {lvl: n - share.get(lvl, 0) for lvl, n in enumerate(res.budget)
                    if n > share.get(lvl, 0)}
            if rest:
                res.release(rest)
            if not writable:
                res.release()
                return pages, None
            res.handoff(owner)
            return pages, res

    async def _map_in(self, index: int, res: Reservation, page_claim: dict[int, int],
                      owner: str) -> Page:
        """A page for a mapping, read on its reservation; someone else's if they were
        quicker."""
        memory = res.split(page_claim, owner=CACHE)
        buf = memory.take(HostLevel.PAGE, PAGE_BYTES)
        with res.active():
            await self._read_into(index, buf, memory, owner)
        page = self.pages.get(index)
        if page is not None:
            buf.free()
            memory.release()
        else:
            page = self.pages[index] = Page(index, buf, memory)
        self._pin(page)
        return page

    def _pin(self, page: Page) -> None:
        page.mapped += 1
        self.clean.pop(page.index, None)

    async def msync(self, mapped: MappedPages) -> None:
        """What `mapped.msync` does: its changed pages that are dirty in the cache go
        with the cache's writeback (reserved when they became dirty); the others go
        now as requests of their own, drawing, under `reserve`, on the mapping's
        revolving share."""
        owner = mapped.owner
        while any(p.writeback for p in mapped.pages):
            await self._wait_changed(owner, "writeback of a mapped page")
        changed = mapped.changed()
        own = [p for p in changed if not p.dirty]
        self._start_writeback(own)  # writers of these pages wait from now
        by_index = {p.index: p for p in own}
        runs = runs_of(sorted(by_index), self.tuning.max_request_pages)
        try:
            with mapped.share.active() if mapped.share is not None else nullcontext():
                await asyncio.gather(*(self._write_run([by_index[i] for i in run], None,
                                                       owner=f"{owner}:msync-{run[0]}")
                                       for run in runs))
        except asyncio.CancelledError:
            mapped.unsynced(own)  # written or not, the next msync writes them again
            raise
        cached = [p for p in changed if p.dirty]
        self._sync_wanted += 1
        try:
            while any(p.dirty or p.writeback for p in cached):
                self._kick.set()
                await self._wait_changed(owner, "writeback of a mapped page")
        finally:
            self._sync_wanted -= 1
        self._report_write_error()

    async def unmap(self, mapped: MappedPages) -> None:
        """What `mapped.unmap` does: its changed pages become dirty pages of the cache,
        under `reserve` booked out of the mapping's share (no memory needed), the rest
        of which goes back; then the pages may be evicted again."""
        owner = mapped.owner
        dirtied = []
        if mapped.writable:
            while any(p.writeback for p in mapped.pages):
                await self._wait_changed(owner, "writeback of a mapped page")
            share = mapped.share
            for page in mapped.changed():
                if page.dirty:
                    continue
                if share is not None:
                    joins = self._joins(page.index)
                    self._book_dirty(joins, share, self._page_books[not joins], not joins)
                self._mark_dirty(page, owner)
                dirtied.append(page)
            if share is not None:
                share.release()
        for page in mapped.pages:
            page.mapped -= 1
            if not page.mapped and not page.dirty and not page.writeback:
                self.clean[page.index] = page
        if self._throttle is not None:
            for _ in dirtied:  # as the fault path does, once per page it dirtied
                await self._balance_dirty_pages(owner)

    # ---- getting pages -------------------------------------------------------------

    async def _reserve_dirty(self, index: int, whole: bool, owner: str) -> Page | None:
        """Under `reserve`: the page, and its share of the request writeback will put it
        in, at once: its increment, and the request's fixed part if it may start one
        (always when it must be read first: its neighbours may change meanwhile)."""
        page = self.pages.get(index)
        reads = page is None and not whole
        starts = reads or not self._joins(index)
        claim = self._dirty_claims[page is None, reads, starts]
        # A new page written whole, nearly every page made dirty, is granted straight
        # into the books, its buffer drawn from them: no reservation of its own to make,
        # move out of and release when the page goes.
        res = await self._admit(claim, owner, into_books=page is None and not reads)
        now = self.pages.get(index)
        joins = self._joins(index)
        if (now is not page or (now is not None and (now.dirty or now.writeback))
                or (not starts and not joins)):
            res.release(claim if res is self._books else None)
            return None
        if res is self._books:
            page = self.pages[index] = Page(index, res.take(HostLevel.PAGE, PAGE_BYTES), None)
            self._book_dirty(joins, None, None, starts)
        elif page is None:
            buf = res.take(HostLevel.PAGE, PAGE_BYTES)
            if reads:
                with res.active():
                    await self._read_into(index, buf, res, owner)
                if index in self.pages:  # someone else brought it in meanwhile
                    buf.free()
                    res.release()
                    return None
                joins = self._joins(index)  # its neighbours may have changed meanwhile
            self._book_dirty(joins, res, self._page_books[starts], starts)
            if reads:  # the read's share goes back; the page stays
                res.release(self._leftover(res))
            res.handoff(CACHE)
            page = self.pages[index] = Page(index, buf, res)  # dirty at once, never clean
        else:
            res.handoff(CACHE)
            self._book_dirty(joins, res, None, starts)
        self._mark_dirty(page, owner)
        return page

    def _book_dirty(self, joins: int, source: Reservation | None, share: Claim | None,
                    has_fixed: bool) -> None:
        """The page's share (its increment, and a fixed part if `has_fixed`) moves from
        `source` into the books (`share` of it, or all of it when None; a `source` of
        None: granted into them already); a page that joins a request (`joins`:
        `_joins` of it, just before it becomes dirty) gives its fixed part back, one
        that bridges two requests gives one of theirs back too."""
        assert has_fixed or joins, "a page that starts a request reserved its fixed part"
        books = self._books
        if source is None:
            assert books is not None, "only books that exist are granted into"
        elif books is None:
            books = self._books = source if share is None else source.split(share, CACHE)
        elif share is None:
            books.absorb(source)
        else:
            source.transfer(share, books)
        spare = joins - 1 + has_fixed
        if spare:
            books.release(self._fixed_books[spare])

    def writeback_booked(self) -> int:
        """Bytes `reserve` holds for writing the dirty pages back (for tests: exactly one
        fixed part per request writeback can form and one increment per page)."""
        return self._books.left if self._books is not None else 0

    @staticmethod
    def _leftover(res: Reservation) -> dict[int, int]:
        return {lvl: n for lvl, n in enumerate(res.budget) if n}

    async def _cached_page(self, index: int, *, owner: str) -> Page:
        while True:
            page = self.pages.get(index)
            if page is not None:
                if not page.dirty and not page.writeback and not page.mapped:
                    self.clean.move_to_end(index)
                return page
            if self.policy is Policy.RESERVE:
                res = await self._admit(self._read_claim, owner)
                if index in self.pages:
                    res.release()
                    continue
                buf = res.take(HostLevel.PAGE, PAGE_BYTES)
                with res.active():
                    await self._read_into(index, buf, res, owner)
                res.release(self._leftover(res))
                res.handoff(CACHE)
                page = Page(index, buf, res)
                if index in self.pages:  # someone else read it meanwhile
                    buf.free()
                    res.release()
                    continue
                self._insert(page)
                return page
            got = await self._allocate_page(index, read=True, owner=owner)
            if got is not None:
                return got

    async def _allocate_page(self, index: int, *, read: bool, owner: str) -> Page | None:
        """Policies other than reserve: allocate (maybe reclaiming), then read if asked."""
        buf = await self.arena.allocate(HostLevel.PAGE, PAGE_BYTES, owner=owner)
        if read:
            await self._read_into(index, buf, None, owner)
        if index in self.pages:
            buf.free()
            return None
        buf.handoff(CACHE)
        page = Page(index, buf, None)
        self._insert(page)
        return page

    async def _read_into(self, index: int, buf: Buffer, res: Reservation | None,
                         owner: str) -> None:
        """Page `index` read into `buf`. Failed or cancelled, `buf` and `res` go back,
        once the device can no longer write into `buf`."""
        try:
            await self.device.read_page(index * PAGE_BYTES, buf.view, owner=owner)
        except StillInFlight as going:
            going.ended.add_done_callback(lambda _: _give_back(buf, res))
            raise
        except BaseException:
            _give_back(buf, res)
            raise

    def _insert(self, page: Page) -> None:
        self.pages[page.index] = page
        self.clean[page.index] = page

    def _mark_dirty(self, page: Page, owner: str) -> None:
        self.clean.pop(page.index, None)
        page.dirty = True
        page.dirtied_at = asyncio.get_running_loop().time()
        self.dirty[page.index] = page
        if self._throttle is not None:
            self._throttle.dirtied(owner)
        if len(self.dirty) > self._background_pages:
            self._kick.set()

    # ---- pressure ------------------------------------------------------------------

    async def _admit(self, claim: Claim, owner: str, into_books: bool = False) -> Reservation:
        """Under `reserve`, where a writer or reader waits for memory, holding nothing.

        One that would wait writes the oldest dirty request back first, as direct
        reclaim does under the other policies: on that request's own reservation
        (so it waits for the device, never for memory). `into_books`: granted at once
        into the books if there are any (then they are what is returned)."""
        room = self._make_room(claim.total)
        if self.dirty and (not room or self.arena.waiting):
            await self._write_run(*self._take_run(), owner=owner)
            self._make_room(claim.total)
        books = self._books
        if into_books and books is not None and self.arena.reserve_now_into(
                claim, books, owner=owner):
            return books
        # Granted at once nearly always (room was just made): no coroutine for that.
        res = self.arena.reserve_now(claim, owner=owner)
        return res if res is not None else await self.arena.reserve(claim, owner=owner)

    def _make_room(self, need: int) -> bool:
        """Evict clean pages until `need` bytes are free; kick writeback if that is short.
        Whether they are free."""
        arena, clean = self.arena, self.clean
        while (short := arena.available() < need) and clean:
            self._evict_oldest()
        if short:
            self._kick.set()
        return not short

    def _evict_oldest(self) -> int:
        """The least recently used clean page leaves the cache; the bytes it frees."""
        _, page = self.clean.popitem(last=False)
        del self.pages[page.index]
        page.buf.free()
        if page.memory is not None:
            page.memory.release()
        return PAGE_BYTES

    async def _direct_reclaim(self, level: int, nbytes: int) -> int:
        """The allocating task reclaims: clean pages first, else it writes dirty ones back,
        unless the emergency pool is half gone (Linux's throttle_direct_reclaim): then it
        wakes the flusher, as a throttled task wakes kswapd, and waits for what writeback
        frees. (Evicting clean pages costs no memory: kswapd would, at once.)"""
        freed = 0
        while freed < nbytes and self.clean:
            freed += self._evict_oldest()
        if freed >= nbytes or not self.dirty:
            return freed
        if not self.arena.direct_reclaim_allowed():
            self._kick.set()
            return freed
        task = asyncio.current_task()
        name = task.get_name() if task is not None else "reclaim"
        del task  # else a cancelled task's traceback holds this frame, and it the task: a cycle
        await self._write_run(*self._take_run(), owner=name)
        while freed < nbytes and self.clean:
            freed += self._evict_oldest()
        return freed

    async def _balance_dirty_pages(self, owner: str) -> None:
        """THROTTLE: when the writer is due to look (host/dirty_throttle.py), wait while
        more pages are dirty or under writeback than the dirty threshold."""
        throttle = self._throttle
        assert throttle is not None
        if not throttle.due(owner):
            return
        while throttle.over(len(self.dirty) + self._writeback_pages):
            self._kick.set()
            await self._wait_changed(owner, "the dirty count to drop below the limit")
        throttle.looked(owner, len(self.dirty) + self._writeback_pages)

    async def _wait_changed(self, owner: str, what: str) -> None:
        self._changed.clear()
        loop = asyncio.get_running_loop()
        # Unsorted: the detector only asks whether any of them can progress.
        wakers = (FLUSHER, *self._writebacks)
        with self.arena.waits.waiting(owner, what, wakers=wakers, now=loop.time()):
            await self._changed.wait()

    # ---- writeback -----------------------------------------------------------------

    def _take_run(self) -> tuple[list[Page], Reservation | None]:
        """The request of the oldest dirty page (host/requests.py), marked under
        writeback, and under `reserve` its reservation, taken off the books."""
        dirty = self.dirty
        span = run_around(next(iter(dirty)), self._is_dirty, self.tuning.max_request_pages)
        run = [dirty.pop(i) for i in span]
        self._start_writeback(run)
        books = self._books
        if books is None:
            return run, None
        res = books.split(self._request_books[len(run)], owner=CACHE)
        if not self.dirty:
            assert books.left == 0, f"writeback books left over with nothing dirty: {books}"
            books.release()
            self._books = None
        return run, res

    def _start_writeback(self, run: list[Page]) -> None:
        for page in run:
            page.writeback = True
        self._writeback_pages += len(run)

    async def _write_run(self, run: list[Page], res: Reservation | None, *, owner: str) -> None:
        """One request: under `reserve` it draws only on `res`, under the others it
        allocates as it goes. Its owner cancelled, the request still ends as one: the
        pages stay under writeback until the device is done with them (StillInFlight),
        or, if it never sent them, they are dirty again and their share back in the
        books; never clean unwritten, never written twice at once."""
        self.inflight += 1
        self._writebacks.add(owner)
        views = [p.view for p in run]
        desc: Charge | None = None
        try:
            if res is not None:
                res.handoff(owner)
                # What the request draws comes back to `res`: whole again if it must
                # be booked again (its owner cancelled before the write went out).
                res.revolving = True
            with res.active() if res is not None else nullcontext():
                # Drawn at once on `res` (no coroutine, no look for what was handed
                # down: it is `res`), else allocated.
                desc = res.charge(HostLevel.REQUEST, REQUEST_DESCRIPTOR_BYTES) \
                    if res is not None else await draw_charge(
                        self.arena, HostLevel.REQUEST, REQUEST_DESCRIPTOR_BYTES, owner=owner)
                await self.device.write_pages(run[0].index * PAGE_BYTES, views, owner=owner)
        except StillInFlight as going:
            going.ended.add_done_callback(
                lambda ended: self._written(run, res, desc, owner, ended.result()))
            raise
        except asyncio.CancelledError:
            self._redirty(run, res, desc, owner)
            raise
        except Exception as exc:
            # The device failed the write (its session gone for good, an I/O error):
            # as Linux does, the pages become clean (the data is lost) and the next
            # fsync says so; dirty or under writeback forever, they would hold their
            # memory and every writer of those pages for good.
            self._written(run, res, desc, owner, exc)
        else:
            self._written(run, res, desc, owner, None)

    def _written(self, run: list[Page], res: Reservation | None, desc: Charge | None,
                 owner: str, error: Exception | None) -> None:
        """The request is over: its memory goes back, its pages are clean."""
        if desc is not None:
            desc.free()
        if res is not None:
            res.release()
        if error is not None:
            self._write_error = self._write_error or error
        for page in run:
            page.dirty = False
            page.writeback = False
            if not page.mapped:
                self.clean[page.index] = page
        self._writeback_pages -= len(run)
        self._writeback_over(owner)
        if self.arena.waiting:
            # Someone waits for memory and pages just became clean: evict them for it,
            # as kswapd does when allocations stall (under `reserve`, writers wait at
            # admission, and clean pages are what frees their memory).
            self._make_room(self.arena.queued_bytes())

    def _redirty(self, run: list[Page], res: Reservation | None, desc: Charge | None,
                 owner: str) -> None:
        """The request never went out: its pages are dirty again (as Linux's
        redirty_page_for_writepage), under `reserve` booked as the request they make
        with their dirty neighbours now, `res` (whole: it revolved) their share."""
        if desc is not None:
            desc.free()
        joins = self._joins(run[0].index, length=len(run))
        now = asyncio.get_running_loop().time()
        for page in run:
            page.writeback = False
            if page.dirty:  # else a mapping's own, which its next msync writes again
                page.dirtied_at = now
                self.dirty[page.index] = page
        self._writeback_pages -= len(run)
        if res is not None:
            res.revolving = False
            res.handoff(CACHE)
            self._book_dirty(joins, res, None, True)
        self._writeback_over(owner)
        self._kick.set()

    def _writeback_over(self, owner: str) -> None:
        self.inflight -= 1
        self._writebacks.discard(owner)
        self._changed.set()

    def _should_flush(self, now: float) -> bool:
        if not self.dirty:
            return False
        if self._sync_wanted or self.arena.waiting:
            return True
        if len(self.dirty) > self._background_pages:
            return True
        oldest = next(iter(self.dirty.values()))
        return now - oldest.dirtied_at >= self.tuning.dirty_expire_s

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        running = self._running
        while True:
            busy = len(running) >= self.tuning.writeback_depth
            if busy or not self._should_flush(loop.time()):
                self._kick.clear()
                # At full depth the flusher waits on its own writebacks; idle, on nothing.
                # (unsorted: the detector only asks whether any of them can progress)
                wakers = tuple(self._writebacks) if busy else ()
                # Woken by a kick or, a second on, by a timer that kicks (to look at the
                # dirty pages' age again): cheaper than asyncio.timeout on a wait made
                # every few writes, and it cannot swallow a cancel as 3.11's wait_for can
                # (one timer for all waits: host/tick.py).
                self._tick.arm(loop, loop.time() + 1.0)
                try:
                    with self._flusher_wait(wakers, loop.time()):
                        await self._kick.wait()
                finally:
                    self._tick.disarm()
                continue
            run, res = self._take_run()
            self._writeback_seq += 1
            name = f"writeback-{self._writeback_seq}"
            if self.policy is Policy.MEMPOOL:
                with self.arena.memalloc():  # the flusher may use the reserve (PF_MEMALLOC)
                    task = loop.create_task(self._write_run(run, res, owner=name), name=name)
            else:
                task = loop.create_task(self._write_run(run, res, owner=name), name=name)
            running.add(task)
            task.add_done_callback(self._writeback_done)  # one callback: one loop event

    def _writeback_done(self, task: asyncio.Task[None]) -> None:
        """A background writeback ended: the flusher may start another."""
        self._running.discard(task)
        self._kick.set()

    def _flusher_wait(self, wakers: tuple[str, ...],
                      now: float) -> AbstractContextManager[object]:
        if not wakers:
            return nullcontext()
        return self.arena.waits.waiting(FLUSHER, "its writebacks", wakers=wakers, now=now)

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.device.size:
            raise ValueError(
                f"{length} B at offset {offset} is outside the {self.device.size} B device"
            )


def _give_back(buf: Buffer, res: Reservation | None) -> None:
    buf.free()
    if res is not None:
        res.release()
