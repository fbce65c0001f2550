"""The target's disk with a volatile write cache, and the power cut that empties it.

A write lands in the cache and is acknowledged from there; a flush (SYNCHRONIZE
CACHE, a FUA write, every write under WCE=0: the target calls ``sync`` for each)
writes the cache back to the medium. A power cut loses what the cache held, as a
real disk may: all of it, none (it had written it all back), or a seeded part,
page by page, in any order. While the power is off the dead target's last I/O
reaches nothing. Every write and flush is also told to the reference model
(:mod:`earmark.sim.disk_model`), which knows what each page may hold.
"""

from __future__ import annotations

import enum
import random

from earmark.memory.levels import PAGE_BYTES
from earmark.sim.disk_model import DiskModel
from earmark.target.backing import Backing, BackingError

__all__ = ["Loss", "VolatileCache"]


class Loss(enum.Enum):
    """What a power cut takes of the pages the cache holds unflushed."""

    ALL = "all"
    NONE = "none"
    SOME = "some"


class VolatileCache:
    """A Backing over `medium` whose writes wait in a cache for a flush; page-aligned
    writes only (the simulator's writer is the page cache)."""

    def __init__(self, medium: Backing, loss: Loss, seed: int, model: DiskModel) -> None:
        self.medium = medium
        self.loss = loss
        self.model = model
        #: Pages written and not yet flushed: page index -> content, oldest first.
        self.dirty: dict[int, bytes] = {}
        self.off = False
        self._rng = random.Random(seed ^ 0xCAC4E)

    @property
    def size(self) -> int:
        return self.medium.size

    def readinto(self, offset: int, buffers: list[memoryview]) -> None:
        total = sum(map(len, buffers))
        data = bytearray(total)
        self.medium.readinto(offset, [memoryview(data)])
        dirty = self.dirty
        if dirty and total:
            for index in range(offset // PAGE_BYTES, (offset + total - 1) // PAGE_BYTES + 1):
                page = dirty.get(index)
                if page is not None:
                    at = index * PAGE_BYTES
                    lo, hi = max(at, offset), min(at + PAGE_BYTES, offset + total)
                    data[lo - offset : hi - offset] = page[lo - at : hi - at]
        at = 0
        for b in buffers:
            b[:] = data[at : at + len(b)]
            at += len(b)

    def read_cached(self, offset: int, buffers: list[memoryview]) -> bool:
        self.readinto(offset, buffers)  # memory never waits for a disk
        return True

    def write(self, offset: int, buffers: list[memoryview]) -> None:
        data = b"".join(buffers)
        if offset % PAGE_BYTES or len(data) % PAGE_BYTES:
            raise ValueError(f"the volatile cache takes whole pages, not {len(data)} B at "
                             f"{offset}")
        if offset + len(data) > self.size:
            raise BackingError(f"{len(data)} B at {offset} run past the {self.size}-byte store")
        if self.off:
            return
        first = offset // PAGE_BYTES
        for n in range(len(data) // PAGE_BYTES):
            page = data[n * PAGE_BYTES : (n + 1) * PAGE_BYTES]
            self.dirty.pop(first + n, None)  # the newest goes last, as a cache's LRU
            self.dirty[first + n] = page
            self.model.written(first + n, page)

    def write_now(self, offset: int, buffers: list[memoryview]) -> bool:
        self.write(offset, buffers)
        return True

    def sync(self) -> None:
        if self.off:
            return
        self._write_back(self.dirty)
        self.model.synced()

    def punch(self, offset: int, length: int) -> None:
        self.write(offset, [memoryview(bytes(length))])

    def extent(self, offset: int) -> tuple[bool, int]:
        return self.medium.extent(offset)

    def close(self) -> None:
        self.medium.close()

    def cut(self) -> None:
        """The power goes: the cache loses what `loss` says, and nothing reaches the disk
        until :meth:`restore`."""
        kept = {} if self.loss is Loss.ALL else self.dirty if self.loss is Loss.NONE else {
            index: page for index, page in self.dirty.items() if self._rng.random() < 0.5}
        self._write_back(kept)
        self.model.cut()
        self.off = True

    def restore(self) -> None:
        """The power is back (the target starts again on what the medium holds)."""
        self.off = False

    def _write_back(self, pages: dict[int, bytes]) -> None:
        for index, page in pages.items():
            self.medium.write(index * PAGE_BYTES, [memoryview(page)])
        self.dirty = {}
