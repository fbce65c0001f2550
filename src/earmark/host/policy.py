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
    mempool_alloc's preallocated elements for bios and requests. A fixed reserve is
    drained when enough concurrent writebacks each hold part of what they need."""

    THROTTLE = "throttle"
    """NONE plus dirty limits as Linux's balance_dirty_pages: a writer checks the
    dirty count only every `ratelimit` pages it dirties (current->nr_dirtied_pause),
    and above the dirty threshold waits for writeback; background writeback starts
    above the background threshold. The check comes after the fact, per writer, so
    N writers overshoot by up to N x ratelimit pages."""

    RESERVE = "reserve"
    """earmark's discipline: a page's writeback memory is reserved, all at once
    with the page, when it becomes dirty; writers wait only there, holding
    nothing; writeback and receive draw only on those reservations."""


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
