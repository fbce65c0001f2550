"""The reference model of a disk with a volatile write cache, and its one rule.

It is told every page written, every flush and every power cut, and nothing of
how the disk keeps them. The rule (:meth:`DiskModel.holds`): a page holds a
version it may have kept durably (the one the last flush found there, or, if a
power cut came since, any of those written before the cut and no flush covered),
or a version written after that. So a write covered by a flush survives any
power cut; one no flush covered may be lost or kept (a later one lost, an
earlier kept); and a page never reads older than its last flushed version, nor
anything never written to it. Pages start as zeros.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from earmark.memory.levels import PAGE_BYTES

__all__ = ["DiskModel"]

_ZEROS = frozenset((zlib.crc32(bytes(PAGE_BYTES)),))


class DiskModel:
    """Per page (crc32s): the versions it may hold durably, and those written since a
    flush or a power cut (in the cache)."""

    __slots__ = ("_durable", "_latest", "_since")

    def __init__(self) -> None:
        self._durable: dict[int, frozenset[int]] = {}
        self._since: dict[int, set[int]] = {}
        self._latest: dict[int, int] = {}

    def written(self, index: int, page: bytes) -> None:
        crc = self._latest[index] = zlib.crc32(page)
        self._since.setdefault(index, set()).add(crc)

    def synced(self) -> None:
        """A flush completed: every page written since holds its latest version durably."""
        latest = self._latest
        self._durable.update((index, frozenset((latest[index],))) for index in self._since)
        self._since.clear()

    def cut(self) -> None:
        """The power went: what the cache held may be on the medium or gone, and a later
        flush covers none of it."""
        durable = self._durable
        for index, versions in self._since.items():
            durable[index] = durable.get(index, _ZEROS) | versions
        self._since.clear()
        self._latest.clear()

    def holds(self, index: int, crc: int) -> bool:
        """The rule: may page `index` read as content of crc32 `crc`?"""
        return crc in self._durable.get(index, _ZEROS) or crc in self._since.get(index, ())

    def broken(self, read: Callable[[int], bytes]) -> list[int]:
        """The pages ever written whose content, as `read` gives it, breaks the rule."""
        return [index for index in sorted(self._durable.keys() | self._since.keys())
                if not self.holds(index, zlib.crc32(read(index)))]
