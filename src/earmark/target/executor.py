"""Runs one window of an SBC plan against a backing store; blocking, so off the event loop
(but for the small reads and writes `loop_io` lets the loop do itself).

The session cuts every plan into windows that fit the command's reserved buffer
(reused window after window); this module does the I/O of one window and turns
failures into sense data. The only memory it takes outside the arena is the
scratch a comparison needs (VERIFY with BYTCHK, COMPARE AND WRITE, ORWRITE):
bounded by one window, and those commands are rare. A SANITIZE OVERWRITE writes the
pattern straight from the parameter list in the command's buffer, as iovecs.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import replace

from earmark.scsi.mode_select import protected
from earmark.scsi.plans import (
    CompareAndWritePlan,
    CopyPlan,
    CopySegment,
    LbaStatusPlan,
    MediumPlan,
    ModeSelectPlan,
    OrWritePlan,
    ReadPlan,
    SanitizePlan,
    SyncPlan,
    UnmapPlan,
    VerifyPlan,
    WritePlan,
    WriteSamePlan,
    first_mismatch,
)
from earmark.scsi.sbc import lba_status
from earmark.scsi.sense import (
    ScsiError,
    miscompare,
    space_allocation_failed,
    unrecovered_read_error,
    write_error,
)
from earmark.scsi.xcopy import copy_aborted
from earmark.target.backing import Backing, BackingError
from earmark.target.events import IoRequest
from earmark.target.segments import cut, fill, total

log = logging.getLogger(__name__)

#: A backing store out of space (or of quota): a thin LUN that cannot allocate.
_NO_SPACE = frozenset((errno.ENOSPC, errno.EDQUOT))

#: Blocks written per pwritev by WRITE SAME (one iovec per block).
_SAME_BATCH = 256

def run_io(io: IoRequest) -> bytes:
    """Do `io`; sense data on failure, b"" on success. Never raises for I/O errors."""
    plan = io.plan
    backing = io.unit.backing
    bs = io.unit.disk.block_size
    try:
        if isinstance(plan, ReadPlan):
            backing.readinto(plan.lba * bs + io.offset, io.views)
        elif isinstance(plan, WritePlan):
            if plan.atomic:
                with io.unit.atomic:
                    backing.write(plan.lba * bs + io.offset, io.views)
            else:
                backing.write(plan.lba * bs + io.offset, io.views)
            if plan.fua and io.last:
                backing.sync()
            if io.unit.out_of_space:
                io.unit.out_of_space = False
                log.warning("LUN %d: writes succeed again", io.unit.number)
        elif isinstance(plan, VerifyPlan):
            _verify(backing, plan, bs, io)
        elif isinstance(plan, WriteSamePlan):
            _write_same(backing, plan, bs, io)
        elif isinstance(plan, UnmapPlan):
            for ext in plan.extents:
                backing.punch(ext.lba * bs, ext.nblocks * bs)
        elif isinstance(plan, SyncPlan):
            backing.sync()
        elif isinstance(plan, CompareAndWritePlan):
            with io.unit.atomic:
                _compare_and_write(backing, plan, bs, io)
        elif isinstance(plan, OrWritePlan):
            with io.unit.atomic:
                _or_write(backing, plan, bs, io)
        elif isinstance(plan, CopyPlan):
            _copy(plan, io)
        elif isinstance(plan, SanitizePlan):
            _sanitize(backing, plan, bs, io)
        elif isinstance(plan, LbaStatusPlan):
            _lba_status(backing, plan, bs, io)
        elif isinstance(plan, ModeSelectPlan):
            io.unit.disk = protected(io.unit.disk, plan.swp)  # the next command sees it
        elif isinstance(plan, MediumPlan):
            io.unit.disk = replace(io.unit.disk, ejected=not plan.loaded)
    except ScsiError as exc:
        return exc.sense()
    except (BackingError, OSError) as exc:
        lba = getattr(plan, "lba", None)
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            if not io.unit.out_of_space:  # once per episode: a busy initiator retries a lot
                io.unit.out_of_space = True
                log.warning("LUN %d: the backing store is full (%s) at LBA %s: writes that "
                            "need space fail with SPACE ALLOCATION FAILED until it is freed",
                            io.unit.number, exc.strerror, lba)
            return space_allocation_failed(lba).sense()
        log.error("LUN %d: %s at LBA %s", io.unit.number, exc, "-" if lba is None else lba)
        reading = isinstance(plan, ReadPlan | VerifyPlan)
        return (unrecovered_read_error(lba) if reading else write_error(lba)).sense()
    return b""


def _read(backing: Backing, offset: int, n: int) -> memoryview:
    scratch = memoryview(bytearray(n))
    backing.readinto(offset, [scratch])
    return scratch


def _verify(backing: Backing, plan: VerifyPlan, bs: int, io: IoRequest) -> None:
    expected = b"".join(io.views)
    if plan.bytchk == 1:
        actual = _read(backing, plan.lba * bs + io.offset, len(expected))
        where = first_mismatch(expected, actual)
        if where is not None:
            raise miscompare(io.offset + where)
    elif plan.bytchk == 3:
        # One block of Data-Out compared with every block of the range.
        step = _SAME_BATCH
        for first in range(0, plan.nblocks, step):
            n = min(step, plan.nblocks - first)
            actual = _read(backing, (plan.lba + first) * bs, n * bs)
            for i in range(n):
                where = first_mismatch(expected, actual[i * bs : (i + 1) * bs])
                if where is not None:
                    raise miscompare((first + i) * bs + where)
    else:
        # BYTCHK 0: only that the blocks can be read, a window at a time.
        step = _SAME_BATCH
        for first in range(0, plan.nblocks, step):
            _read(backing, (plan.lba + first) * bs, min(step, plan.nblocks - first) * bs)


def _write_same(backing: Backing, plan: WriteSamePlan, bs: int, io: IoRequest) -> None:
    if plan.unmap:
        backing.punch(plan.lba * bs, plan.nblocks * bs)
        return
    block = memoryview(bytes(bs)) if plan.ndob else memoryview(b"".join(io.views))
    # The same block repeated as iovecs: one pwritev per batch, no copy of the data.
    for first in range(0, plan.nblocks, _SAME_BATCH):
        n = min(_SAME_BATCH, plan.nblocks - first)
        backing.write((plan.lba + first) * bs, [block] * n)


def _copy(plan: CopyPlan, io: IoRequest) -> None:
    """Each segment through the command buffer, a buffer-full at a time; a failed read
    or write ends the copy with COPY ABORTED naming it (SPC-4 6.4.5)."""
    room = total(io.views)
    unsynced: set[int] = set()
    for seg in plan.segments:
        src, dst = io.units[seg.source], io.units[seg.destination]
        src_at = seg.src_lba * src.disk.block_size
        dst_at = seg.dst_lba * dst.disk.block_size
        for done in _chunks(seg, src_at, dst_at, room):
            n = min(room, seg.nbytes - done)
            views = cut(io.views, 0, n)
            try:
                src.backing.readinto(src_at + done, views)
            except (BackingError, OSError) as exc:
                log.error("LUN %d: %s in EXTENDED COPY", seg.source, exc)
                raise copy_aborted(0x11, 0x00) from exc  # UNRECOVERED READ ERROR
            try:
                dst.backing.write(dst_at + done, views)
            except (BackingError, OSError) as exc:
                log.error("LUN %d: %s in EXTENDED COPY", seg.destination, exc)
                raise copy_aborted(0x0C, 0x00) from exc  # WRITE ERROR
        if not dst.disk.write_cache:
            unsynced.add(seg.destination)
    for lun in unsynced:
        io.units[lun].backing.sync()


def _chunks(seg: CopySegment, src_at: int, dst_at: int, room: int) -> range:
    """Chunk offsets in an order that reads every byte before it is overwritten: back
    to front when the destination overlaps the source from above, else front to back."""
    forward = range(0, seg.nbytes, room)
    if seg.source == seg.destination and src_at < dst_at < src_at + seg.nbytes:
        return forward[::-1]
    return forward


def _compare_and_write(backing: Backing, plan: CompareAndWritePlan, bs: int, io: IoRequest) -> None:
    half = plan.nblocks * bs
    data = b"".join(io.views)
    actual = _read(backing, plan.lba * bs, half)
    where = first_mismatch(memoryview(data)[:half], actual)
    if where is not None:
        raise miscompare(where)
    backing.write(plan.lba * bs, [memoryview(data)[half:]])
    if plan.fua:
        backing.sync()


def _or_write(backing: Backing, plan: OrWritePlan, bs: int, io: IoRequest) -> None:
    n = total(io.views)
    offset = plan.lba * bs + io.offset
    actual = _read(backing, offset, n)
    mask = int.from_bytes(b"".join(io.views), "big")
    merged = (int.from_bytes(actual, "big") | mask).to_bytes(n, "big")
    backing.write(offset, [memoryview(merged)])
    if plan.fua and io.last:
        backing.sync()


def _sanitize(backing: Backing, plan: SanitizePlan, bs: int, io: IoRequest) -> None:
    """The unit answers NOT READY, SANITIZE IN PROGRESS while this runs (its Disk says
    so: the sessions read it per command), and is itself again however it ends."""
    unit = io.unit
    unit.disk = replace(unit.disk, sanitizing=True)
    try:
        _erase(backing, plan, bs, io)
    finally:
        unit.disk = replace(unit.disk, sanitizing=False)


def _erase(backing: Backing, plan: SanitizePlan, bs: int, io: IoRequest) -> None:
    if not plan.overwrite:
        backing.punch(0, backing.size)
        backing.sync()
        return
    pattern = cut(io.views, plan.pattern_at, plan.pattern_at + plan.pattern)
    # One block as iovecs: the pattern repeated, the last copy cut to fit.
    whole, part = divmod(bs, plan.pattern)
    block = pattern * whole + cut(pattern, 0, part)
    per_write = max(1, _SAME_BATCH // len(block))
    nblocks = backing.size // bs
    for done in range(plan.passes):
        if done and plan.invert:
            for view in pattern:
                view[:] = bytes(b ^ 0xFF for b in view)
        for first in range(0, nblocks, per_write):
            backing.write(first * bs, block * min(per_write, nblocks - first))
    backing.sync()


def _lba_status(backing: Backing, plan: LbaStatusPlan, bs: int, io: IoRequest) -> None:
    """One descriptor: a block is deallocated only if all of it is a hole."""
    mapped, end = backing.extent(plan.lba * bs)
    nblocks = (-(-end // bs) if mapped else end // bs) - plan.lba
    if nblocks < 1:  # the hole ends inside the block: the rest of it is data
        mapped, nblocks = True, 1
    fill(io.views, lba_status(plan.lba, nblocks, not mapped)[:total(io.views)])
