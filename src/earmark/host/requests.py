"""Writeback requests: which dirty pages go out together, and what one costs in memory.

A request is a run of adjacent dirty pages inside one aligned window of
``max_request_pages`` pages (as a device's max_sectors and chunk boundaries split
bios), never across one. So every maximal run of dirty pages inside a window is
exactly one request, whatever order its pages were dirtied or taken in, and
`reserve` keeps its books locally: a page that becomes dirty with no dirty
neighbour in its window starts a request, one with a dirty neighbour joins it,
one between two bridges them (two requests become one). Every policy's writeback
takes requests by this one rule, so they all merge alike.

What a request costs is split the same way: its fixed part (the request
descriptor, the command PDU, the response and R2T buffers) once, and each page's
increment (its Data-Out header share) per page. The increment is the largest step
of the device's command cost from k to k+1 pages, so the fixed part plus k
increments always covers a k-page command, however the PDUs and bursts fall.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from earmark.host.device import PageDevice
from earmark.memory import HostLevel
from earmark.memory.levels import PAGE_BYTES, REQUEST_DESCRIPTOR_BYTES

__all__ = ["RequestCost", "add_claims", "dirty_neighbours", "request_cost", "run_around",
           "runs_of"]


@dataclass(frozen=True, slots=True)
class RequestCost:
    #: Bytes per level a request takes once, whatever its length.
    fixed: Mapping[int, int]
    #: Bytes per level each of its pages adds.
    per_page: Mapping[int, int]

    def of(self, pages: int, runs: int = 1) -> dict[int, int]:
        """What ``runs`` requests of ``pages`` pages in all are booked at."""
        return add_claims(*([self.fixed] * runs), *([self.per_page] * pages))


def request_cost(device: PageDevice, max_pages: int) -> RequestCost:
    one = add_claims(device.command_cost(True, PAGE_BYTES),
                     {HostLevel.REQUEST: REQUEST_DESCRIPTOR_BYTES})
    step: dict[int, int] = {}
    before = device.command_cost(True, PAGE_BYTES)
    for pages in range(2, max_pages + 1):
        now = device.command_cost(True, pages * PAGE_BYTES)
        for lvl in (*before, *now):
            step[lvl] = max(step.get(lvl, 0), now.get(lvl, 0) - before.get(lvl, 0))
        before = now
    per_page = {lvl: n for lvl, n in step.items() if n}
    # One page's request is its fixed part and one increment: cost(1) + (k-1) steps >= cost(k).
    fixed = {lvl: n - per_page.get(lvl, 0) for lvl, n in one.items()
             if n > per_page.get(lvl, 0)}
    return RequestCost(fixed, per_page)


def run_around(index: int, is_dirty: Callable[[int], bool], max_pages: int) -> range:
    """The request ``index`` (dirty) belongs to: its dirty run, inside its window."""
    start = index - index % max_pages
    lo = hi = index
    while lo > start and is_dirty(lo - 1):
        lo -= 1
    while hi + 1 < start + max_pages and is_dirty(hi + 1):
        hi += 1
    return range(lo, hi + 1)


def dirty_neighbours(index: int, is_dirty: Callable[[int], bool], max_pages: int,
                     length: int = 1) -> int:
    """How many requests page ``index`` (with the ``length`` - 1 pages after it, all in
    one window) would join if it became dirty: 0 (it starts one), 1, or 2 (it bridges
    two into one)."""
    at = index % max_pages
    left = at > 0 and is_dirty(index - 1)
    right = at + length < max_pages and is_dirty(index + length)
    return left + right


def runs_of(indices: list[int], max_pages: int) -> list[list[int]]:
    """Sorted page indices cut into the requests they make: adjacent, inside a window."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][-1] + 1 and index % max_pages:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def add_claims(*claims: Mapping[int, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for claim in claims:
        for lvl, n in claim.items():
            out[lvl] = out.get(lvl, 0) + n
    return out
