"""What a draw on the arena gives back: a real buffer, or a charge for a descriptor.

Both remember where they came from (a reservation, or the arena directly) so
that returning them puts the bytes back in the right account, exactly once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from earmark.memory.buddy import Block
from earmark.memory.errors import ReleaseError

if TYPE_CHECKING:
    from earmark.memory.reservation import Reservation


class _Account(Protocol):
    """The arena side of an allocation: where its bytes go when it is freed (and what
    refuses to take them twice)."""

    def _return_allocation(self, alloc: Allocation, to_reservation: bool) -> None: ...


class Allocation:
    """Bytes drawn at one level, by one owner, from a reservation or from the arena."""

    __slots__ = ("_account", "_freed", "cost", "level", "owner", "reservation")

    def __init__(
        self,
        account: _Account,
        level: int,
        cost: int,
        owner: str,
        reservation: Reservation | None,
    ) -> None:
        self._account = account
        self._freed = False
        self.level = level
        self.cost = cost
        self.owner = owner
        self.reservation = reservation

    @property
    def freed(self) -> bool:
        return self._freed

    def free(self) -> None:
        """Give the bytes back to the arena (a reservation's hold shrinks for good).
        Returned twice is an error, raised where the bytes are booked back (the arena's
        `_return_allocation`), once for every way back."""
        self._account._return_allocation(self, to_reservation=False)

    def put_back(self) -> None:
        """Give the bytes back to the reservation they came from, to be drawn again."""
        if self.reservation is None:
            raise ReleaseError(
                f"{self.describe()} was allocated directly from the arena, not from a "
                "reservation: free() it instead"
            )
        self._account._return_allocation(self, to_reservation=True)

    def handoff(self, owner: str) -> None:
        """Make `owner` the holder (a writer's page now belongs to the cache)."""
        self.owner = owner

    def describe(self) -> str:
        return f"{self.cost} B by {self.owner}"


class Charge(Allocation):
    """A descriptor's nominal footprint: accounted, but no bytes of the arena's buffer."""

    __slots__ = ()


class Buffer(Allocation):
    """A real slice of the arena's bytearray, possibly in several contiguous runs.

    Most buffers are one run (`view`); when the arena is fragmented a buffer is
    a short list of runs (`segments`), which vectored I/O (`os.preadv`,
    `transport.writelines`) takes as it is. Freed runs are released so a stale
    view raises instead of reading someone else's data.
    """

    __slots__ = ("blocks", "nbytes", "segments")

    def __init__(
        self,
        account: _Account,
        level: int,
        cost: int,
        owner: str,
        reservation: Reservation | None,
        nbytes: int,
        blocks: list[Block],
        segments: list[memoryview],
    ) -> None:
        super().__init__(account, level, cost, owner, reservation)
        self.nbytes = nbytes
        self.blocks = blocks
        self.segments = segments

    @property
    def view(self) -> memoryview:
        """The buffer as one memoryview; only for buffers that are one run."""
        if len(self.segments) != 1:
            raise ValueError(
                f"buffer of {self.nbytes} B is in {len(self.segments)} runs; use .segments"
            )
        return self.segments[0]

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        """Copy `data` in at `offset`, across runs."""
        src = memoryview(data).cast("B")
        if offset < 0 or offset + len(src) > self.nbytes:
            raise ValueError(
                f"{len(src)} B at offset {offset} do not fit a {self.nbytes} B buffer"
            )
        done = 0
        for seg in self.segments:
            if offset >= len(seg):
                offset -= len(seg)
                continue
            n = min(len(seg) - offset, len(src) - done)
            seg[offset : offset + n] = src[done : done + n]
            done += n
            offset = 0
            if done == len(src):
                break

    def tobytes(self) -> bytes:
        if len(self.segments) == 1:
            return self.segments[0].tobytes()
        return b"".join(self.segments)

    def describe(self) -> str:
        return f"buffer of {self.nbytes} B by {self.owner}"
