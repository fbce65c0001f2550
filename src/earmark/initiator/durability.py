"""Which acknowledged writes a flush vouches for, across a target that powered on again.

A write's GOOD means the data is in the target's cache; only a SYNCHRONIZE CACHE
issued after it makes it durable. When the target restarts (power lost, its
volatile cache with it) and says so with a POWER ON unit attention, the writes
it had acknowledged and no completed flush had covered may be gone, and a flush
to the new target cannot bring them back: that flush fails, once, with
:class:`CacheLostError` (Linux's errseq: the error is reported, then cleared).
Writes are counted when acknowledged, a flush covers what was counted when it was
issued, so a flush that spans the restart (issued before, answered after) does
not vouch for them either.
"""

from __future__ import annotations

from earmark.initiator.errors import CacheLostError
from earmark.scsi.sense import Asc, ScsiError, SenseKey

__all__ = ["Durability"]

#: The unit attentions after which the target's volatile cache may be gone: a power on
#: (LIO says the first on every login), or the device resetting itself. A LOGICAL UNIT
#: RESET (BUS DEVICE RESET FUNCTION OCCURRED) keeps the cache.
_CACHE_GONE = frozenset((Asc.POWER_ON_OR_RESET_OCCURRED, Asc.POWER_ON_OCCURRED,
                         Asc.DEVICE_INTERNAL_RESET))


class Durability:
    """One device's count of acknowledged writes, what flushes covered, and a loss owed."""

    __slots__ = ("acked", "covered", "lost")

    def __init__(self) -> None:
        #: Writes acknowledged (GOOD), and how many of those the last flush covered.
        self.acked = 0
        self.covered = 0
        #: The target powered on with acknowledged writes uncovered: the next flush fails.
        self.lost = False

    def attention(self, error: ScsiError) -> None:
        """A unit attention came: if it says the cache may be gone, so may be the writes
        no flush covered."""
        if (error.key == SenseKey.UNIT_ATTENTION and error.code in _CACHE_GONE
                and self.acked > self.covered):
            self.lost = True

    def flushed(self, covers: int) -> None:
        """A flush issued when ``acked`` was ``covers`` completed: raises CacheLostError if
        the target may have lost writes since the flush before (and clears it)."""
        self.covered = max(self.covered, covers)
        if self.lost:
            self.lost = False
            raise CacheLostError(
                "the target powered on again with acknowledged writes not yet flushed: "
                "they may be lost")
