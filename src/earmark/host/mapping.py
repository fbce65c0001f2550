"""Mapped pages: views straight into the page cache, and how their stores are found.

A store through a mapping changes a process's memory need with no call into the
system, so under `reserve` a writable mapping holds, from map time, each mapped
page's writeback share (a request's fixed part and the page's increment: every
page may end up its own request), and holds it revolving: what an msync's
writeback draws comes back to it, ready for the next store. A read-only mapping
holds no writeback at all. Which pages changed is found without trusting the
writer: a digest of each page taken at map time (and after each msync) against
the page now. Stores reach the cache's books only at msync or unmap (fsync knows
the pages dirtied by pwrite and by unmap), as nothing tells it of them before.

The mechanism (pinning, writeback, the books) is the cache's (host/pagecache.py);
this is the handle a writer holds.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from earmark.memory import Reservation

if TYPE_CHECKING:
    from earmark.host.pagecache import Page, PageCache

__all__ = ["MappedPages"]


class MappedPages:
    __slots__ = ("_cache", "_digests", "_pages", "owner", "share", "views", "writable")

    def __init__(self, cache: PageCache, pages: list[Page], writable: bool,
                 share: Reservation | None, owner: str) -> None:
        self._cache = cache
        self._pages = pages
        self.writable = writable
        self.owner = owner
        #: Under `reserve`, writable: every mapped page's writeback share, revolving.
        self.share = share
        #: One view per page, the cached page itself (read-only for a read-only mapping).
        self.views = [p.view if writable else p.view.toreadonly() for p in pages]
        self._digests = [zlib.crc32(view) for view in self.views]

    @property
    def offset(self) -> int:
        """Where the first mapped page starts on the device."""
        return self._pages[0].index * len(self.views[0])

    def changed(self) -> list[Page]:
        """The pages stored into since their digest was taken; their digests move on."""
        out = []
        for n, page in enumerate(self._pages):
            now = zlib.crc32(self.views[n])
            if now != self._digests[n]:
                self._digests[n] = now
                out.append(page)
        return out

    def unsynced(self, pages: list[Page]) -> None:
        """These pages' stores did not go out (their msync was cancelled first): `changed`
        reports them again (-1 is no crc32)."""
        for n, page in enumerate(self._pages):
            if page in pages:
                self._digests[n] = -1

    @property
    def pages(self) -> list[Page]:
        return self._pages

    async def msync(self) -> None:
        """The pages stored into since map or the last msync are on the device; a
        writeback that failed since the last fsync or msync raises here, once."""
        self._check_mapped()
        if self.writable:
            await self._cache.msync(self)

    async def unmap(self) -> None:
        """The pages stored into become the cache's dirty pages, their writeback
        reserved out of what the mapping held (so unmap needs no memory); the rest of
        that goes back, and the pages may be evicted again."""
        self._check_mapped()
        await self._cache.unmap(self)
        self._pages, self.views, self._digests = [], [], []

    def _check_mapped(self) -> None:
        if not self._pages:
            raise ValueError(f"{self.owner}'s mapping was unmapped: its views are gone")
