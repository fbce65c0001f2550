"""How often `throttle`'s writers look at the dirty count: Linux's balance_dirty_pages.

A model in pages and counters of mm/page-writeback.c, so the baseline is as
strong as the mechanism it stands for (written from the rules, not the code):

* A task looks at the dirty count only after it has dirtied ``nr_dirtied_pause``
  pages (balance_dirty_pages_ratelimited). A new task's pause is 128 KiB of
  pages (copy_process); after each look it is ``dirty_poll_interval(dirty,
  thresh)``, about the square root of the pages left below the threshold, so near
  the limit every task looks every page or two.
* Once the limit has been seen exceeded (``dirty_exceeded``), every task looks
  at least every 32 KiB of pages, whatever its pause.
* One counter shared by every task on a CPU (``bdp_ratelimits``; the event loop
  is one CPU) counts the pages dirtied since anyone looked; when it reaches the
  global ``ratelimit_pages`` the task that dirtied the page looks, whatever its
  own count, so a thousand tasks with fresh pauses cannot all run free at once.

What a look does is the page cache's: wait while more than ``thresh`` pages are
dirty or under writeback (NR_FILE_DIRTY + NR_WRITEBACK). Linux's rate-based
pauses between the freerun point and the threshold are not modelled; a writer
here runs free below the threshold and waits above it.
"""

from __future__ import annotations

PAGE_SHIFT = 12
"""4 KiB pages, as the page cache's."""

INITIAL_PAUSE_PAGES = 128 >> (PAGE_SHIFT - 10)
"""copy_process: a new task's first look comes after 128 KiB dirtied (32 pages)."""

EXCEEDED_PAUSE_PAGES = 32 >> (PAGE_SHIFT - 10)
"""balance_dirty_pages_ratelimited: with dirty_exceeded set, a task looks at least every
32 KiB (8 pages)."""


def ilog2(n: int) -> int:
    """The kernel's ilog2: the index of the highest set bit (n >= 1)."""
    return n.bit_length() - 1


def dirty_poll_interval(dirty: int, thresh: int) -> int:
    """mm/page-writeback.c dirty_poll_interval: pages a task may dirty before its next
    look, 2 ** (floor(log2(pages left below the threshold)) // 2), at least 1."""
    if thresh > dirty:
        return 1 << (ilog2(thresh - dirty) >> 1)
    return 1


def global_ratelimit_pages(thresh: int, cpus: int = 1) -> int:
    """writeback_set_ratelimit: the shared counter's limit, the threshold split 32 ways
    per CPU, and never under 16 pages."""
    return max(thresh // (cpus * 32), 16)


class DirtyThrottle:
    """The counters of balance_dirty_pages_ratelimited for one backing device.

    Sans-I/O: the page cache tells it each page a task dirties and each look, and
    asks whether a task is due to look; the waiting is the cache's."""

    __slots__ = ("_dirtied", "_pause", "exceeded", "ratelimit_pages", "shared", "thresh")

    def __init__(self, thresh: int, *, cpus: int = 1) -> None:
        self.thresh = thresh
        self.ratelimit_pages = global_ratelimit_pages(thresh, cpus)
        #: wb->dirty_exceeded: the last look found more than `thresh` pages dirty.
        self.exceeded = False
        #: bdp_ratelimits: pages dirtied on this CPU since a task last looked.
        self.shared = 0
        self._dirtied: dict[str, int] = {}  # current->nr_dirtied
        self._pause: dict[str, int] = {}  # current->nr_dirtied_pause

    def dirtied(self, task: str) -> None:
        """A page went from clean to dirty (account_page_dirtied)."""
        self._dirtied[task] = self._dirtied.get(task, 0) + 1
        self.shared += 1

    def due(self, task: str) -> bool:
        """balance_dirty_pages_ratelimited: must `task` look at the dirty count now?"""
        ratelimit = self._pause.get(task, INITIAL_PAUSE_PAGES)
        if self.exceeded:
            ratelimit = min(ratelimit, EXCEEDED_PAUSE_PAGES)
        if self._dirtied.get(task, 0) >= ratelimit:
            self.shared = 0  # this look accounts for what the CPU dirtied
            return True
        if self.shared >= self.ratelimit_pages:
            self.shared = 0
            return True
        return False

    def over(self, dirty: int) -> bool:
        """One round of a look: is the limit exceeded? (sets dirty_exceeded if so)."""
        if dirty > self.thresh:
            self.exceeded = True
            return True
        return False

    def looked(self, task: str, dirty: int) -> None:
        """A look ended with `dirty` pages at or under the threshold: the task's next
        pause comes from the margin left, and dirty_exceeded is cleared."""
        self.exceeded = False
        self._dirtied[task] = 0
        self._pause[task] = dirty_poll_interval(dirty, self.thresh)
