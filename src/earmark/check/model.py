"""The memory cycle as a small state machine, one per policy, for the exhaustive checker.

What the demo shows on one schedule, this lets :mod:`earmark.check.explore` show
on every schedule of a small system: writers dirty pages in a bounded memory, a
few writeback slots clean them, and cleaning a page needs memory of its own, a
request, a task descriptor, and a receive buffer when the target's answer
arrives, exactly the levels of docs/architecture.md.

Memory is counted in units (a page is ``PAGE`` units, each descriptor one), with
the arena's rule for the emergency pool: ordinary allocations may commit up to
``arena - emergency``, writeback and receive (PF_MEMALLOC) up to ``arena``.

* ``none``: every allocation waits where it stands, holding what it holds.
* ``mempool``: the same, but writeback and receive may use the emergency units.
* ``throttle``: ``none``, and a writer looks at the dirty count (dirty pages and
  pages in writeback) when balance_dirty_pages_ratelimited would
  (:mod:`earmark.host.dirty_throttle`): after ``ratelimit`` pages first, then after
  ``dirty_poll_interval`` pages of what was left below ``dirty_limit`` at its last
  look, at most 8 while the count is above the limit, or when the pages all writers
  dirtied since anyone looked reach the shared ``ratelimit_pages``; it waits while
  the count is above ``dirty_limit``. ``dirty_exceeded`` is read as the count now,
  as if someone had just looked: a throttle a little stronger than Linux's.
* ``reserve``: dirtying a page reserves its page and its writeback's
  descriptors and receive buffer at once (the writer waits there, holding
  nothing); writeback draws on that and never waits.

With ``merge`` above 1 writeback merges as the page cache does (host/requests.py):
a request is a run of adjacent dirty pages inside an aligned window of ``merge``
pages, and any such run may be the next one taken. Writer ``i``'s ``j``-th page is
page ``j * writers + i``, so the writers' pages interleave and runs grow from
several writers. A request's request, task and receive units are its fixed part,
one per request whatever its length (its Data-Out headers are in the task's unit
here); under ``reserve`` a page that starts a run reserves them, one that joins a
run reserves only its page, and one that bridges two runs gives one set back.
A writer whose next page does not fit while pages are dirty writes a request back
itself, as the page cache's writers do (direct reclaim under ``none``, ``mempool`` and
``throttle``, with PF_MEMALLOC so that ``mempool``'s may use the emergency units, but
not once they are half gone: Linux's throttle_direct_reclaim; under ``reserve`` on that
request's own reservation, before it waits at admission). It
dirties nothing more until that request completes. These writebacks come on top of the
``writebacks`` slots, one per writer at most.

A state is a tuple (hashable, so the explorer never visits one twice); a
transition is a (words, next state) pair.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from earmark.host.dirty_throttle import (
    EXCEEDED_PAUSE_PAGES,
    dirty_poll_interval,
    global_ratelimit_pages,
)
from earmark.host.policy import Policy
from earmark.memory.arena import allow_direct_reclaim

__all__ = ["FLUSHER", "PAGE", "Config", "State", "describe", "initial", "is_done",
           "requests_booked", "steps"]

PAGE = 4
"""Units of one page; each descriptor (request, task, receive buffer) is one unit."""
_WRITEBACK = 3  # request + task + receive buffer: a request's fixed part
_CLAIM = PAGE + _WRITEBACK  # what `reserve` takes when a page starts a request

# Writeback slot stages, by index into State.slots.
_NEED_REQUEST, _NEED_TASK, _IN_FLIGHT, _NEED_RECEIVE = range(4)
_STAGE_WORDS = ("a request", "a task descriptor", "the target's answer", "a receive buffer")
FLUSHER = -1
"""The writer field of a writeback the flusher started."""


@dataclass(frozen=True, slots=True)
class Config:
    policy: Policy
    writers: int
    pages: int
    """Pages each writer dirties."""
    arena: int
    """Units of memory in all."""
    writebacks: int = 2
    """Writeback slots: pages being cleaned at once."""
    emergency: int = 0
    """Units only writeback and receive may use (``mempool``)."""
    dirty_limit: int = 2
    ratelimit: int = 1
    """Pages a writer dirties before its first look (``throttle``; Linux's is 32)."""
    merge: int = 1
    """Most pages one writeback request takes (1: every page is its own request)."""

    def __post_init__(self) -> None:
        if min(self.writers, self.pages, self.writebacks, self.ratelimit, self.merge) < 1:
            raise ValueError("writers, pages, writebacks, ratelimit and merge must be at "
                             "least 1")
        if not 0 <= self.emergency < self.arena:
            raise ValueError(f"the emergency pool ({self.emergency}) must be smaller than the "
                             f"arena ({self.arena})")
        need = _CLAIM if self.policy is Policy.RESERVE else PAGE
        if self.arena - self.emergency < need:
            raise ValueError(f"an arena of {self.arena} units cannot hold even one page's "
                             f"{need} units under {self.policy.value}")


@dataclass(frozen=True, slots=True)
class State:
    left: tuple[int, ...]
    """Pages each writer still has to dirty."""
    since_check: tuple[int, ...]
    """Pages each writer dirtied since it last looked at the dirty count (``throttle``)."""
    pause: tuple[int, ...]
    """Pages each writer may dirty before it looks again (``throttle``)."""
    shared: int
    """Pages dirtied since anyone looked (``throttle``; counted only when it can matter)."""
    dirty: int
    """Dirty pages no writeback has taken yet."""
    slots: tuple[tuple[int, int, int], ...]
    """Writebacks as (stage, pages, writer), sorted; stages: need a request, need a task,
    in flight, need a receive buffer; writer: the writer writing it back itself, or
    ``FLUSHER``."""
    used: int
    """Units committed."""
    where: int = 0
    """Which pages are dirty, one bit each (only with ``merge`` above 1)."""


def initial(config: Config) -> State:
    return State((config.pages,) * config.writers, (0,) * config.writers,
                 (config.ratelimit,) * config.writers, 0, 0, (), 0)


Slot = tuple[int, int, int]


def _with(state: State, dirty: int, slots: tuple[Slot, ...], used: int,
          where: int | None = None) -> State:
    """`state` after a writeback step: the writers' books unchanged."""
    return State(state.left, state.since_check, state.pause, state.shared, dirty, slots, used,
                 state.where if where is None else where)


def is_done(state: State) -> bool:
    return not any(state.left) and not state.dirty and not state.slots


def _fits(config: Config, state: State, units: int, memalloc: bool) -> bool:
    limit = config.arena if memalloc else config.arena - config.emergency
    return state.used + units <= limit


def _move(slots: tuple[Slot, ...], src: Slot | None, dst: Slot | None) -> tuple[Slot, ...]:
    out = list(slots)
    if src is not None:
        out.remove(src)
    if dst is not None:
        out.append(dst)
    return tuple(sorted(out))


def _dirty_neighbours(config: Config, where: int, page: int) -> int:
    at = page % config.merge
    left = at > 0 and bool(where >> (page - 1) & 1)
    right = at + 1 < config.merge and bool(where >> (page + 1) & 1)
    return left + right


def _runs(config: Config, where: int) -> Iterator[tuple[int, int]]:
    """Every request writeback could take: (first page, pages) of each dirty run inside
    a window."""
    page, end = 0, where.bit_length()
    while page < end:
        if not where >> page & 1:
            page += 1
            continue
        first = page
        while page < end and where >> page & 1 and (page == first or page % config.merge):
            page += 1
        yield first, page - first


def requests_booked(config: Config, state: State) -> int:
    """What ``reserve`` holds for the dirty pages and the requests writeback can form
    from them and has formed: exactly their pages and one fixed part each."""
    dirty_runs = len(list(_runs(config, state.where))) if config.merge > 1 else state.dirty
    in_flight = sum(pages for _, pages, _ in state.slots)
    return PAGE * (state.dirty + in_flight) + _WRITEBACK * (dirty_runs + len(state.slots))


def _takes(config: Config, state: State) -> Iterator[tuple[str, int, int]]:
    """Every request a writeback could take now: (its pages in words, how many, which
    pages stay dirty)."""
    if config.merge == 1:
        if state.dirty:
            yield "a dirty page", 1, 0
        return
    for first, pages in _runs(config, state.where):
        run = ((1 << pages) - 1) << first
        yield f"pages {first}..{first + pages - 1}", pages, state.where & ~run


def steps(config: Config, state: State) -> Iterator[tuple[str, State]]:
    """Every transition enabled in ``state``, in words."""
    reserve = config.policy is Policy.RESERVE
    merging = config.merge > 1
    start = _IN_FLIGHT if reserve else _NEED_REQUEST
    in_writeback = sum(pages for _, pages, _ in state.slots)
    writing_back = {writer for _, _, writer in state.slots}
    dirty_total = state.dirty + in_writeback
    throttle = config.policy is Policy.THROTTLE
    over = dirty_total > config.dirty_limit
    shared_limit = global_ratelimit_pages(config.dirty_limit)
    count_shared = throttle and config.writers * config.pages >= shared_limit
    for i, left in enumerate(state.left):
        if not left or i in writing_back:
            continue
        since, pause, shared = state.since_check[i], state.pause[i], state.shared
        if throttle:
            ratelimit = min(pause, EXCEEDED_PAUSE_PAGES) if over else pause
            if since >= ratelimit or shared >= shared_limit:
                if over:
                    continue  # balance_dirty_pages: waits for writeback
                since, shared = 0, 0
                pause = dirty_poll_interval(dirty_total, config.dirty_limit)
        page = (config.pages - left) * config.writers + i
        joins = _dirty_neighbours(config, state.where, page) if merging else 0
        cost = PAGE + (_WRITEBACK if reserve and not joins else 0)
        if not _fits(config, state, cost, False):
            # It would wait for memory (holding nothing): first it writes a request back,
            # unless the emergency units are half gone (throttled: it only waits).
            free = config.arena - state.used
            for words, pages, where in _takes(config, state) if allow_direct_reclaim(
                    free, config.emergency) else ():
                yield (f"writer-{i} would wait for memory and writes {words} back itself",
                       _with(state, state.dirty - pages,
                             _move(state.slots, None, (start, pages, i)), state.used, where))
            continue
        if reserve and joins == 2:
            cost -= _WRITEBACK  # it bridges two requests into one: a fixed part goes back
        words = ""
        if reserve:
            words = " (joining a request)" if joins else " (reserving its request)"
        yield (f"writer-{i} dirties {f'page {page}' if merging else 'a page'}{words}",
               State((*state.left[:i], left - 1, *state.left[i + 1 :]),
                     (*state.since_check[:i], since + 1, *state.since_check[i + 1 :]),
                     (*state.pause[:i], pause, *state.pause[i + 1 :]),
                     shared + 1 if count_shared else 0,
                     state.dirty + 1, state.slots, state.used + cost,
                     state.where | 1 << page if merging else 0))
    flushing = sum(1 for _, _, writer in state.slots if writer == FLUSHER)
    if flushing < config.writebacks:
        for words, pages, where in _takes(config, state):
            yield (f"a writeback takes {words}",
                   _with(state, state.dirty - pages,
                         _move(state.slots, None, (start, pages, FLUSHER)), state.used, where))
    memalloc = config.policy is Policy.MEMPOOL
    for slot in set(state.slots):
        stage, pages, writer = slot
        who = "a writeback" if writer == FLUSHER else f"writer-{writer}'s writeback"
        if reserve:
            yield (f"the target answers {who}; its pages and reservation are freed",
                   _with(state, state.dirty, _move(state.slots, slot, None),
                         state.used - PAGE * pages - _WRITEBACK))
            continue
        if stage in (_NEED_REQUEST, _NEED_TASK) and _fits(config, state, 1, memalloc):
            yield (f"{who} gets {_STAGE_WORDS[stage]}",
                   _with(state, state.dirty,
                         _move(state.slots, slot, (stage + 1, pages, writer)), state.used + 1))
        if stage == _IN_FLIGHT:
            yield (f"the target answers {who}",
                   _with(state, state.dirty,
                         _move(state.slots, slot, (_NEED_RECEIVE, pages, writer)), state.used))
        if stage == _NEED_RECEIVE and _fits(config, state, 1, memalloc):
            yield (f"{who} gets its receive buffer, completes, and its pages are freed",
                   _with(state, state.dirty, _move(state.slots, slot, None),
                         state.used - PAGE * pages - _WRITEBACK + 1))


def describe(config: Config, state: State) -> str:
    """A stuck state in words: who waits for what, and how full memory is."""
    parts = []
    own = {writer: stage for stage, _, writer in state.slots if writer != FLUSHER}
    for i, left in enumerate(state.left):
        if i in own:
            parts.append(f"writer-{i} writes a request back itself and waits for "
                         f"{_STAGE_WORDS[own[i]]} ({left} pages to go)")
        elif left:
            parts.append(f"writer-{i} waits for memory ({left} pages to go)")
    if state.dirty:
        parts.append(f"{state.dirty} dirty pages wait for a writeback slot")
    for stage in range(len(_STAGE_WORDS)):
        count = sum(1 for at, _, writer in state.slots if at == stage and writer == FLUSHER)
        if count:
            parts.append(f"{count} writeback(s) hold their pages and wait for "
                         f"{_STAGE_WORDS[stage]}")
    parts.append(f"memory {state.used} of {config.arena} units used")
    return "; ".join(parts)
