"""Granule allocator for the arena's bytearray: a buddy system that never fails short.

A reservation promises bytes, so a draw on it must succeed whenever the arena's
books say the bytes are free, however fragmented the arena has become. A plain
buddy allocator cannot promise that (a request rounds up to a power of two and
needs one free block of that size). This one allocates exactly the requested
number of granules: one contiguous run when a large enough block is free (the
unused tail of the block goes straight back), otherwise the binary decomposition
of the count as separate blocks. Every free granule is usable, so "free count >=
need" is the only condition for success.
"""

from __future__ import annotations

Block = tuple[int, int]
"""(first granule, order): 2**order granules starting at that granule."""


class BuddyAllocator:
    """Hands out runs of granules numbered 0..granules-1; knows nothing of bytes."""

    __slots__ = ("_free", "free_granules", "granules")

    def __init__(self, granules: int) -> None:
        if granules <= 0:
            raise ValueError(f"an allocator needs at least one granule, not {granules}")
        self.granules = granules
        self.free_granules = granules
        self._free: list[set[int]] = [set() for _ in range(granules.bit_length())]
        start = 0
        for order in range(granules.bit_length() - 1, -1, -1):
            if granules & (1 << order):
                self._free[order].add(start)
                start += 1 << order

    def allocate(self, count: int) -> list[Block]:
        """Blocks covering exactly `count` granules, contiguous when the arena allows.

        Succeeds whenever `count` granules are free: if no single block can hold
        the run, the largest free blocks are taken until the count is met.
        """
        if count <= 0:
            return []
        if count > self.free_granules:
            raise MemoryError(f"{count} granules asked, {self.free_granules} free")
        self.free_granules -= count
        order = (count - 1).bit_length()
        if order < len(self._free):
            start = self._pop(order)
            if start is not None:
                if count == 1 << order:  # a power of two (a page): the block itself
                    return [(start, order)]
                # One block of 2**order > count: keep the head, give the tail back.
                blocks = self._carve(start, count)
                self._release_tail(start, order, count)
                return blocks
        # Fragmented: take the largest blocks that fit what is still missing.
        blocks = []
        remaining = count
        while remaining:
            order = min(remaining.bit_length() - 1, len(self._free) - 1)
            got = self._pop(order)
            while got is None:
                order -= 1
                got = self._take_exact(order)
            blocks.append((got, order))
            remaining -= 1 << order
        return blocks

    def free(self, blocks: list[Block]) -> None:
        for start, order in blocks:
            self.free_granules += 1 << order
            self._insert(start, order)

    def _pop(self, order: int) -> int | None:
        """A free block of exactly `order`, splitting a larger one if needed."""
        free = self._free
        for have in range(order, len(free)):
            if free[have]:
                start = free[have].pop()
                while have > order:
                    have -= 1
                    free[have].add(start + (1 << have))
                return start
        return None

    @staticmethod
    def _carve(start: int, count: int) -> list[Block]:
        """The aligned blocks that make up granules start..start+count-1."""
        blocks = []
        for bit in range(count.bit_length() - 1, -1, -1):
            if count & (1 << bit):
                blocks.append((start, bit))
                start += 1 << bit
        return blocks

    def _release_tail(self, start: int, order: int, count: int) -> None:
        at, end = start + count, start + (1 << order)
        while at < end:
            size = at & -at
            while at + size > end:
                size >>= 1
            self._insert(at, size.bit_length() - 1)
            at += size

    def _take_exact(self, order: int) -> int | None:
        peers = self._free[order]
        return peers.pop() if peers else None

    def _insert(self, start: int, order: int) -> None:
        free = self._free
        top = len(free) - 1
        while order < top:
            buddy = start ^ (1 << order)
            peers = free[order]
            if buddy not in peers:
                break
            peers.remove(buddy)
            start &= ~(1 << order)
            order += 1
        free[order].add(start)
