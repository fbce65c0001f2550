"""Which backing I/O the event loop does itself, instead of handing it to a thread.

A thread round trip (submit, wake a worker, hand the GIL over, wake the loop through
its self-pipe) costs tens of microseconds of the loop's time; a 4 KiB preadv from the
page cache costs about two and a buffered 4 KiB pwritev about four, and the reply then
leaves with the rest of the batch. So small commands run on the loop when they cannot
wait for a disk:

- a read whose blocks are all in the page cache (preadv2 with RWF_NOWAIT), or of a
  file on a memory filesystem (tmpfs refuses the flag; `backing.py` asks the mounts);
- a plain buffered write (no FUA, write cache on, not atomic, and not while the unit's
  backing is out of space: the threads report that, and see it end): the kernel copies it into
  the page cache and returns. Where it can refuse a write that would wait
  (pwritev2 RWF_NOWAIT), it does; where it cannot (ext4 on most kernels), a write may
  still sleep in dirty-page throttling. `LoopWrites` watches for that: once slow writes
  take a tenth of the loop's time it sends writes to the threads for a while, so a
  throttled disk costs the loop a bounded share of its time, not a stall per write.

Only a command's single window qualifies: its buffer was carved when the command
arrived, so nothing still queued can point into it. Anything else goes to `run_io` on
a thread, which also reports errors: a read or write refused or failed here is simply
done again there (both are idempotent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from earmark.scsi.plans import ReadPlan, WritePlan
from earmark.target.backing import BackingError

if TYPE_CHECKING:  # events imports the unit, which holds a LoopWrites
    from earmark.target.events import IoRequest

log = logging.getLogger(__name__)

#: Largest transfer done on the loop thread; larger ones copy long enough that a pool
#: thread, running beside the loop, is worth its round trip.
INLINE_BYTES = 64 * 1024

#: A write on the loop that took longer than this waited for something (throttling,
#: reclaim, a disk, or the machine preempting the loop): a 64 KiB page-cache copy takes
#: tens of microseconds.
SLOW_SECONDS = 0.001
#: The loop closes to a unit's writes when slow writes took more than `STALL_SHARE` of
#: a `WINDOW_SECONDS` window: dirty-page throttling pauses a writer for 10-200 ms every
#: few dozen writes, so it crosses that at once; a preempted loop's few milliseconds
#: a second do not. Closed for a back-off that doubles, from the first to the last,
#: while the windows after reopening stall too, and is back to the first after a quiet one.
WINDOW_SECONDS = 1.0
STALL_SHARE = 0.1
FIRST_BACKOFF_SECONDS = 1.0
LAST_BACKOFF_SECONDS = 64.0


@dataclass(slots=True)
class LoopWrites:
    """Whether a unit's small writes may run on the event loop now (one per unit: dirty
    throttling is the backing device's). Time is passed in; the runtime reports how
    long each write on the loop took. So the loop spends at most about a tenth of a
    window blocked before it stops writing, and after that a window per back-off."""

    unit: int = 0
    closed_until: float = 0.0
    backoff: float = FIRST_BACKOFF_SECONDS
    window_end: float = 0.0
    stalled: float = 0.0
    closings: int = 0

    def open(self, now: float) -> bool:
        return now >= self.closed_until

    def took(self, seconds: float, now: float) -> None:
        if now >= self.window_end:  # a window went by without closing: quiet again
            self.backoff = FIRST_BACKOFF_SECONDS
            self.window_end = now + WINDOW_SECONDS
            self.stalled = 0.0
        if seconds <= SLOW_SECONDS:
            return
        self.stalled += seconds
        if self.stalled <= STALL_SHARE * WINDOW_SECONDS:
            return
        log.warning("LUN %d: writes on the event loop waited %.0f ms in under %.0f s "
                    "(dirty-page throttling or a slow disk?): they go to the I/O threads "
                    "for %.0f s", self.unit, self.stalled * 1e3, WINDOW_SECONDS, self.backoff)
        self.closings += 1
        self.closed_until = now + self.backoff
        self.window_end = self.closed_until + WINDOW_SECONDS  # then a window on probation
        self.backoff = min(self.backoff * 2, LAST_BACKOFF_SECONDS)
        self.stalled = 0.0


def run_on_loop(io: IoRequest, clock: Callable[[], float]) -> bool:
    """Do `io` now, on the caller's thread, if it is small and needs no wait for a disk
    (see the module docstring). True: done, with success. False: nothing done that
    counts; hand it to `run_io` on a thread. `clock` times the writes for the unit's
    `LoopWrites` (a read here cannot wait for a disk, so only writes are timed)."""
    plan = io.plan
    if io.offset or not io.last or io.task.xfer > INLINE_BYTES:
        return False
    unit = io.unit
    try:
        if isinstance(plan, ReadPlan):
            return unit.backing.read_cached(plan.lba * unit.disk.block_size, io.views)
        if isinstance(plan, WritePlan) and not plan.fua and not plan.atomic:
            gate, now = unit.loop_writes, clock()
            if unit.out_of_space or not gate.open(now):
                return False
            try:
                return unit.backing.write_now(plan.lba * unit.disk.block_size, io.views)
            finally:
                gate.took(clock() - now, now)
    except (BackingError, OSError):
        pass
    return False
