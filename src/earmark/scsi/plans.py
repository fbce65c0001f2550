"""What the SBC command set hands the target: an immediate reply or an I/O plan.

A plan names the blocks to move and nothing else; the runtime owns the buffers
(it reserved them at admission) and the backing store, executes the plan off the
event loop, and turns what happens into a Reply. Helpers for the outcomes that
need SCSI knowledge (a miscompare, a medium error) live in `sense`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .sense import ScsiError, ScsiStatus


@dataclass(slots=True, frozen=True)
class Reply:
    """Status, Data-In (already cut to the CDB's allocation length) and sense."""

    data: bytes = b""
    status: ScsiStatus = ScsiStatus.GOOD
    sense: bytes = b""

    @classmethod
    def error(cls, exc: ScsiError) -> Reply:
        return cls(b"", ScsiStatus.CHECK_CONDITION, exc.sense())


GOOD = Reply()


@dataclass(slots=True)
class ReadPlan:
    """Read nblocks from lba into the Data-In buffer.

    Not frozen, nor is `WritePlan`: one is built per read or write command, and a
    frozen dataclass pays an ``object.__setattr__`` call per field. Nothing changes
    a plan once built."""

    lba: int
    nblocks: int


@dataclass(slots=True)
class WritePlan:
    """Write the Data-Out buffer to lba; with fua, sync before reporting GOOD.

    atomic (WRITE ATOMIC): the whole buffer is one window, written with one call
    while holding the unit's `atomic` lock, so no other read-modify-write plan sees
    half of it.
    """

    lba: int
    nblocks: int
    fua: bool = False
    atomic: bool = False


@dataclass(slots=True, frozen=True)
class WriteSamePlan:
    """Replicate one block over nblocks from lba.

    The block is the Data-Out buffer, or zeros when ndob. With unmap the runtime
    punches the range whatever the block holds: SBC-4 5.50 lets the device server
    unmap each block rather than write it, and with LBPRZ=1 they then read as zeros.
    """

    lba: int
    nblocks: int
    unmap: bool = False
    ndob: bool = False


@dataclass(slots=True, frozen=True)
class Extent:
    lba: int
    nblocks: int


@dataclass(slots=True, frozen=True)
class UnmapPlan:
    """Punch every extent; they were checked against the capacity and the limits."""

    extents: tuple[Extent, ...] = field(default_factory=tuple)


@dataclass(slots=True, frozen=True)
class SyncPlan:
    """Make every completed write durable (fsync) before reporting GOOD."""


@dataclass(slots=True, frozen=True)
class VerifyPlan:
    """Read nblocks at lba and check them.

    bytchk 0: only that they can be read. 1: compare with the Data-Out buffer
    (nblocks long). 3: compare each block with the single Data-Out block. On the
    first difference answer `sense.miscompare(offset)` (`first_mismatch` finds it).
    """

    lba: int
    nblocks: int
    bytchk: int


@dataclass(slots=True, frozen=True)
class CompareAndWritePlan:
    """Atomically: read nblocks at lba, compare with the first half of the Data-Out
    buffer, and only if equal write its second half there (SBC-4 5.3). No other
    write to the range may run in between.
    """

    lba: int
    nblocks: int
    fua: bool = False


@dataclass(slots=True, frozen=True)
class OrWritePlan:
    """Read nblocks at lba, OR the Data-Out buffer into them, write them back, as one
    atomic step like CompareAndWritePlan (SBC-4 5.8)."""

    lba: int
    nblocks: int
    fua: bool = False


@dataclass(slots=True, frozen=True)
class CopySegment:
    """Copy nbytes from LBA src_lba of LUN source to LBA dst_lba of LUN destination."""

    source: int
    src_lba: int
    destination: int
    dst_lba: int
    nbytes: int


@dataclass(slots=True, frozen=True)
class CopyPlan:
    """EXTENDED COPY: do the segments in order (SPC-4 6.4), every range already checked
    against its unit. The data goes through the command's buffer, chunk after chunk,
    so memory stays one buffer whatever the copy's size. `list_id` (None: the list
    carries none) and `hold` say what the unit's CopyManager keeps of the outcome.
    """

    list_id: int | None
    hold: bool
    segments: tuple[CopySegment, ...]


@dataclass(slots=True, frozen=True)
class SanitizePlan:
    """SANITIZE the whole unit, then make it durable (SBC-4 4.11).

    overwrite: write the initialization pattern (the `pattern` bytes of the Data-Out
    parameter list from `pattern_at` on, repeated to fill each block) over every block,
    `passes` times, inverted between passes when `invert`. Otherwise (BLOCK ERASE,
    CRYPTO ERASE) deallocate every block: with LBPRZ=1 they read as zeros, and a
    file backing keeps no key whose loss would be a crypto erase, so dropping the
    blocks is the erase.
    """

    overwrite: bool
    pattern_at: int = 0
    pattern: int = 0
    passes: int = 1
    invert: bool = False


@dataclass(slots=True, frozen=True)
class LbaStatusPlan:
    """GET LBA STATUS: one descriptor, from lba to where the backing store's
    allocation changes (mapped or deallocated), as `length` bytes of Data-In (the
    allocation length cut to the 24 bytes of one descriptor's parameter data)."""

    lba: int
    length: int


@dataclass(slots=True, frozen=True)
class ModeSelectPlan:
    """Set or clear the unit's software write protection: its Disk becomes
    `mode_select.protected(disk, swp)`."""

    swp: bool


@dataclass(slots=True, frozen=True)
class MediumPlan:
    """Load (`loaded`) or eject the unit's removable medium: its Disk's `ejected`
    becomes `not loaded`; the file stays open, as a medium in its drive's tray."""

    loaded: bool


Plan = (
    ReadPlan | WritePlan | WriteSamePlan | UnmapPlan | SyncPlan | VerifyPlan
    | CompareAndWritePlan | OrWritePlan | CopyPlan | SanitizePlan | LbaStatusPlan
    | ModeSelectPlan | MediumPlan
)
Outcome = Reply | Plan


def first_mismatch(expected: bytes | memoryview, actual: bytes | memoryview) -> int | None:
    """Offset of the first byte where the two differ, None when equal (same length)."""
    if expected == actual:
        return None
    a, b = memoryview(expected).cast("B"), memoryview(actual).cast("B")
    lo, hi = 0, min(len(a), len(b))
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if a[lo:mid] != b[lo:mid]:
            hi = mid
        else:
            lo = mid
    for i in range(lo, hi):
        if a[i] != b[i]:
            return i
    return hi
