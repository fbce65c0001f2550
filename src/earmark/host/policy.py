"""The four memory disciplines the host can run, one code path chosen by name.

Each is a model of a real mechanism, not a strawman; the page cache and the
block layer consult the policy at the few places where real systems differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Policy(Enum):
    NONE = "none"
    """Plain allocation with direct reclaim, as Linux's page allocator without reserves:
    an allocating task that finds no free memory reclaims itself — evicts clean
    pages, and when there are none writes dirty pages back and waits (pageout from
    shrink_page_list). That writeback allocates too, so it waits for memory that
    only writeback can free."""

    MEMPOOL = "mempool"
    """NONE plus an emergency reserve that only the writeback and receive paths may
    use: PF_MEMALLOC for reclaimers (set in __perform_reclaim) and the flusher, and
    mempool_alloc's preallocated elements for bios and requests. The reserve is what
    Linux keeps below its min watermarks (host/watermarks.py: 256 KiB of the demo's
    4 MiB arena). Reclaimers are throttled as Linux's throttle_direct_reclaim throttles
    them: none starts once free memory is down to half the reserve, so what is left of
    it goes to the writebacks already at work. In the demo (`--sim`) that holds every
    writer count we ran, to 16,384 (unthrottled, it broke at 2048). A fixed reserve is
    still drained when the writebacks in flight need more than it holds: `earmark
    check` finds those schedules."""

    THROTTLE = "throttle"
    """NONE plus dirty limits as Linux's balance_dirty_pages (host/dirty_throttle.py):
    a writer looks at the dirty and writeback count only after the pages its last
    look allowed (about the square root of the margin then left below the
    threshold, at most 8 once the limit is exceeded), or when the pages every writer
    dirtied since anyone looked reach the shared ratelimit; above the threshold it
    waits for writeback. Background writeback starts above the background threshold.
    The look still comes after the fact, per writer, so many writers between their
    looks overshoot together: in the demo (`--sim`, seed 1) it holds 64 writers and
    breaks at 128."""

    RESERVE = "reserve"
    """earmark's discipline: a page's writeback memory is reserved, all at once
    with the page, when it becomes dirty (or when it is mapped writable), at the
    granularity writeback uses: its increment of the request it will join, and the
    request's fixed part only when it starts one (host/requests.py); writers wait
    only there, holding nothing (one that would wait writes the oldest request back
    first, on that request's reservation, as direct reclaim does); writeback and
    receive draw only on those reservations."""


@dataclass(frozen=True, slots=True)
class HostTuning:
    """Knobs of the real mechanisms above, with Linux's defaults where it has them.

    How often THROTTLE's writers check is not a knob: host/dirty_throttle.py derives
    it from the dirty count as Linux does; MEMPOOL's pool is sized from the arena as
    Linux sizes its min watermark (host/watermarks.py)."""

    #: vm.dirty_ratio: writers are throttled above this share of memory dirty.
    dirty_ratio: float = 0.20
    #: vm.dirty_background_ratio: background writeback starts above this share.
    background_ratio: float = 0.10
    #: vm.dirty_expire_centisecs: dirty pages older than this are written back.
    dirty_expire_s: float = 30.0
    #: Largest writeback request, in pages (merging adjacent dirty pages).
    max_request_pages: int = 32
    #: Writeback requests in flight at once.
    writeback_depth: int = 8
