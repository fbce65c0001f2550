"""Where a FUSE request's buffer comes from, under each policy.

Under ``reserve`` every buffer exists before the mount (reserved from an arena,
locked with the rest of the process) and a request only takes a free one. The
other policies allocate one per request as it comes and drop it once answered,
as a daemon written the usual way does: under memory pressure that allocation
is where the kernel makes the daemon reclaim, that is, wait for writeback that
only the daemon itself can do.
"""

from __future__ import annotations

__all__ = ["AllocatedSlots", "ReservedSlots", "Slots"]


class Slots:
    """At most ``limit`` buffers out at once."""

    limit: int

    def take(self) -> memoryview | None:
        """A buffer, or None while ``limit`` are out."""
        raise NotImplementedError

    def give(self, slot: memoryview) -> None:
        raise NotImplementedError


class ReservedSlots(Slots):
    def __init__(self, buffers: list[memoryview]) -> None:
        self._free = list(buffers)
        self.limit = len(buffers)

    def take(self) -> memoryview | None:
        free = self._free
        return free.pop() if free else None

    def give(self, slot: memoryview) -> None:
        self._free.append(slot)


class AllocatedSlots(Slots):
    def __init__(self, nbytes: int, limit: int) -> None:
        self._nbytes = nbytes
        self.limit = limit
        self._out = 0

    def take(self) -> memoryview | None:
        if self._out >= self.limit:
            return None
        self._out += 1
        return memoryview(bytearray(self._nbytes))

    def give(self, slot: memoryview) -> None:
        self._out -= 1
