"""The arena: one bounded, preallocated region that every byte of earmark comes from.

Two ways to get memory, one set of books:

* `reserve(claims)`: all-or-nothing across levels, granted strictly in arrival
  order (a large claim is never overtaken by a stream of small ones), then drawn
  on without waiting. This is the `reserve` discipline.
* `allocate(level, n)`: plain allocation that may wait, with a direct-reclaim
  hook and an emergency pool that only reclaim/receive paths may dip into. This
  is what the `none`, `mempool` and `throttle` policies run on, as real kernels do.

Whatever the policy, the sum of everything reserved and allocated never exceeds
the capacity: the arena refuses or queues, it never overcommits.
"""

from __future__ import annotations

import asyncio
import mmap
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from enum import IntEnum

from earmark.memory.allocation import Allocation, Buffer, Charge
from earmark.memory.buddy import BuddyAllocator
from earmark.memory.claim import Claim
from earmark.memory.errors import (
    ArenaError,
    ClaimTooLargeError,
    OverdrawError,
    ReleaseError,
    ReservationTimeoutError,
)
from earmark.memory.levels import HostLevel
from earmark.memory.reservation import Reservation
from earmark.memory.waits import Wait, WaitKind, WaitRegistry

#: Set on reclaim and receive paths (Linux's PF_MEMALLOC): may use the emergency pool.
_MEMALLOC: ContextVar[bool] = ContextVar("earmark_memalloc", default=False)

ReclaimHook = Callable[[int, int], Awaitable[int]]
"""Direct reclaim: called with (level, bytes wanted), returns bytes it freed."""

Shrinker = Callable[[], None]
"""Gives back memory kept only as a cache (a finished command's reservation kept for
the next one): called, synchronously, whenever someone is about to wait."""

Validator = Callable[["Arena", str, list[int], bool], None]
"""Called as (arena, owner, levels asked, is_reservation) before any wait or reservation."""


def allow_direct_reclaim(free: int, reserve: int) -> bool:
    """Linux's allow_direct_reclaim (mm/vmscan.c): a task may reclaim for an ordinary
    allocation while free memory is above half the PF_MEMALLOC reserve. Below that,
    throttle_direct_reclaim makes it wait for kswapd instead, so that what is left of
    the reserve goes to the reclaimers already at work (swap over NFS, 2012). With no
    reserve there is nothing to keep."""
    return not reserve or 2 * free > reserve


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % (size // 16) == 0:
            return f"{n / size:g} {unit}"
    return f"{n} B"


class _Memalloc:
    """`Arena.memalloc`'s context: a plain class, since a generator-based context manager
    costs several times as much and every received PDU of the allocating policies and
    every writeback under mempool enters one."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _MEMALLOC.set(True)

    def __exit__(self, *_: object) -> None:
        _MEMALLOC.reset(self._token)


class _Waiter:
    __slots__ = ("amounts", "emergency", "future", "make", "owner", "since", "total")

    def __init__(
        self,
        amounts: list[int],
        total: int,
        owner: str,
        emergency: bool,
        future: asyncio.Future[object],
        make: Callable[[], object],
        since: float,
    ) -> None:
        self.amounts = amounts
        self.total = total
        self.owner = owner
        self.emergency = emergency
        self.future = future
        self.make = make
        self.since = since


class Arena:
    """Bounded memory with leveled books; single-threaded like asyncio (see ThreadArena)."""

    def __init__(
        self,
        capacity: int,
        *,
        levels: type[IntEnum] = HostLevel,
        granule: int = 64,
        emergency: int = 0,
        name: str = "arena",
    ) -> None:
        if granule <= 0 or granule & (granule - 1):
            raise ValueError(f"granule must be a power of two, not {granule}")
        if capacity <= 0 or capacity % granule:
            raise ValueError(
                f"arena capacity {capacity} B must be a positive multiple of the "
                f"{granule}-byte granule"
            )
        if not 0 <= emergency < capacity:
            raise ValueError(
                f"emergency pool of {emergency} B must be smaller than the arena "
                f"({capacity} B)"
            )
        self.name = name
        self.capacity = capacity
        self.granule = granule
        self.emergency = emergency
        self.levels = levels
        nlevels = len(levels)
        # Anonymous memory, not a bytearray: the kernel gives zeroed pages as they are
        # first touched, where bytearray(capacity) zeroes them all up front (a quarter
        # of a simulated run went to the target's 16-128 MiB arena).
        self._memory = mmap.mmap(-1, capacity)
        self._view = memoryview(self._memory)
        self._granules = BuddyAllocator(capacity // granule)
        # Per level, kept only where memory is drawn (a reservation's untaken part
        # is per reservation, summed when gauges are read): the reserve fast path
        # touches one counter.
        self._taken = [0] * nlevels  # drawn from reservations
        self._plain = [0] * nlevels  # allocated without a reservation
        self._level_high = [0] * nlevels  # high-water of drawn + allocated
        self._limit = capacity - emergency  # what ordinary requests may commit
        self.committed = 0
        self.high_water = 0
        #: Grants and returns so far: a watchdog sees a stall as a still counter.
        self.progress = 0
        self._queue: deque[_Waiter] = deque()
        self._emergency_queue: deque[_Waiter] = deque()
        self._reservations: set[Reservation] = set()
        self._allocations: set[Allocation] = set()
        self.waits = WaitRegistry()
        self.reclaim: ReclaimHook | None = None
        self.validator: Validator | None = None
        self._shrinkers: list[Shrinker] = []

    # ---- caches -----------------------------------------------------------------

    def add_shrinker(self, shrinker: Shrinker) -> None:
        """Register a cache of memory that must be given back before anyone waits.

        Linux's shrinkers, made strict: a holder may keep memory it does not need
        (to save the next request a trip to the arena) only on the promise that
        the moment anyone has to wait, it is released, so that nobody ever waits
        for memory no progress would free.
        """
        self._shrinkers.append(shrinker)

    def remove_shrinker(self, shrinker: Shrinker) -> None:
        self._shrinkers.remove(shrinker)

    def _shrink(self) -> None:
        for shrinker in tuple(self._shrinkers):
            shrinker()

    # ---- reserving --------------------------------------------------------------

    def claim(self, claims: Mapping[int, int]) -> Claim:
        """Check and sum a claim once, for code that makes the same claim often."""
        return Claim(claims, self.levels)

    async def reserve(
        self,
        claims: Claim | Mapping[int, int],
        *,
        owner: str,
        timeout: float | None = None,
    ) -> Reservation:
        """Everything `claims` asks for, at once, in arrival order; wait holding nothing."""
        claim = claims if isinstance(claims, Claim) else Claim(claims, self.levels)
        total = claim.total
        if self.validator is not None:
            self.validator(self, owner, claim.levels(), True)
        if (
            self.committed + total <= self._limit
            and not self._queue
            and not self._emergency_queue
        ):
            return self._grant_reservation(claim, owner)
        if total > self._limit:
            raise ClaimTooLargeError(
                f"{owner} claims {format_bytes(total)} ({self._words(claim.amounts)}) but "
                f"the {self.name} can never grant more than {format_bytes(self._limit)}: "
                "raise its capacity or claim less"
            )
        res = await self._wait(
            claim.amounts, total, owner, False, timeout,
            lambda: self._grant_reservation(claim, owner),
        )
        assert isinstance(res, Reservation)
        return res

    def reserve_now(self, claims: Claim | Mapping[int, int], *, owner: str) -> Reservation | None:
        """`reserve` if it can be granted at once, else None; never waits, never queues.

        For a caller with no event loop to wait on (the blocking initiator, whose
        thread owns its arena): it asks, and either holds everything the work
        needs or knows at once that it cannot have it. And for a hot path that
        awaits `reserve` only when this says no (a coroutine costs more than the grant).
        """
        claim = claims if isinstance(claims, Claim) else Claim(claims, self.levels)
        if self.validator is not None:
            self.validator(self, owner, claim.levels(), True)
        if self._fits_now(claim.total, False):
            return self._grant_reservation(claim, owner)
        return None

    def reserve_now_into(self, claims: Claim | Mapping[int, int], into: Reservation, *,
                         owner: str) -> bool:
        """`reserve_now` for `owner`, the grant added to `into` (another holder's, which
        the work's memory joins at once) instead of made a reservation of its own;
        False, with nothing granted, when it cannot be granted at once.

        For a hot path whose every grant would be moved into the same reservation
        straight away (a page made dirty: its share joins the cache's books)."""
        claim = self._claim_of(claims)
        if into.released:
            raise ReleaseError(f"reservation of {into.owner} was released; nothing to add to")
        if self.validator is not None:
            self.validator(self, owner, claim.levels(), True)
        if not self._fits_now(claim.total, False):
            return False
        self._book_grant(claim.total)
        budget = into.budget
        for lvl, n in claim.pairs:
            budget[lvl] += n
        into.left += claim.total
        return True

    def _grant_reservation(self, claim: Claim, owner: str) -> Reservation:
        self._book_grant(claim.total)
        res = Reservation(self, owner, claim.amounts.copy(), claim.total)
        self._reservations.add(res)
        return res

    def _book_grant(self, total: int) -> None:
        committed = self.committed + total
        self.committed = committed
        if committed > self.high_water:
            self.high_water = committed
        self.progress += 1

    # ---- plain allocation -------------------------------------------------------

    async def allocate(
        self,
        level: int,
        nbytes: int,
        *,
        owner: str,
        timeout: float | None = None,
    ) -> Buffer:
        """A buffer outside any reservation: may reclaim, may wait (policies other than reserve)."""
        cost = self.cost(nbytes)
        got = await self._allocate(
            level, cost, owner, timeout, lambda: self._plain_buffer(level, nbytes, cost, owner)
        )
        assert isinstance(got, Buffer)
        return got

    async def allocate_charge(
        self,
        level: int,
        nbytes: int,
        *,
        owner: str,
        timeout: float | None = None,
    ) -> Charge:
        """A descriptor's nominal size outside any reservation; may reclaim, may wait."""
        got = await self._allocate(
            level, nbytes, owner, timeout, lambda: self._plain_charge(level, nbytes, owner)
        )
        assert isinstance(got, Charge)
        return got

    def allocate_charge_now(self, level: int, nbytes: int, *, owner: str) -> Charge | None:
        """`allocate_charge` if it can be granted at once, else None; never reclaims.

        For a path that must not wait where it runs (a connection's reader, in a
        protocol callback): it stops and waits elsewhere, with `allocate_charge`.
        """
        if self._fits_now(nbytes, _MEMALLOC.get()):
            return self._plain_charge(level, nbytes, owner)
        return None

    def memalloc(self) -> _Memalloc:
        """Mark the enclosed code as a reclaim/receive path (PF_MEMALLOC): it may use the
        emergency pool."""
        return _Memalloc()

    async def _allocate(
        self,
        level: int,
        cost: int,
        owner: str,
        timeout: float | None,
        make: Callable[[], Allocation],
    ) -> object:
        emergency = _MEMALLOC.get()
        limit = self.capacity if emergency else self.capacity - self.emergency
        if cost > limit:
            raise ClaimTooLargeError(
                f"{owner} asks for {format_bytes(cost)} at {self.levels(level).name} but "
                f"the {self.name} can never grant more than {format_bytes(limit)}"
            )
        if self._fits_now(cost, emergency):
            return make()
        if self.reclaim is not None and not emergency:
            # Direct reclaim: the allocating task cleans memory itself, marked
            # PF_MEMALLOC so that what reclaim allocates may use the emergency pool.
            with self.memalloc():
                await self.reclaim(level, cost)
            if self._can_grant_now(cost, emergency):
                return make()
        if self.validator is not None:
            self.validator(self, owner, [level], False)
        amounts = Claim({level: cost}, self.levels).amounts
        return await self._wait(amounts, cost, owner, emergency, timeout, make)

    def _fits_now(self, cost: int, emergency: bool) -> bool:
        """Whether an allocation can be granted at once, caches shrunk if that is what
        it takes (before direct reclaim, which costs far more)."""
        if self._can_grant_now(cost, emergency):
            return True
        if not self._shrinkers:
            return False
        self._shrink()
        return self._can_grant_now(cost, emergency)

    def _can_grant_now(self, cost: int, emergency: bool) -> bool:
        if emergency:
            # PF_MEMALLOC does not queue behind ordinary allocations.
            return not self._emergency_queue and self.committed + cost <= self.capacity
        return (
            not self._queue
            and not self._emergency_queue
            and self.committed + cost <= self._limit
        )

    def _plain_buffer(self, level: int, nbytes: int, cost: int, owner: str) -> Buffer:
        self._commit(level, cost)
        buf = self._carve(level, nbytes, cost, owner, None)
        self._allocations.add(buf)
        return buf

    def _plain_charge(self, level: int, nbytes: int, owner: str) -> Charge:
        self._commit(level, nbytes)
        charge = Charge(self, level, nbytes, owner, None)
        self._allocations.add(charge)
        return charge

    # ---- waiting ----------------------------------------------------------------

    async def _wait(
        self,
        amounts: list[int],
        total: int,
        owner: str,
        emergency: bool,
        timeout: float | None,
        make: Callable[[], object],
    ) -> object:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        now = loop.time()
        waiter = _Waiter(amounts, total, owner, emergency, future, make, now)
        queue = self._emergency_queue if emergency else self._queue
        queue.append(waiter)
        if self._shrinkers:  # caches go first: what they release wakes the queue
            self._shrink()
        try:
            if timeout is None:
                return await future
            async with asyncio.timeout(timeout):
                return await future
        except BaseException as exc:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Granted as we were leaving: give it straight back.
                self._undo(future.result())
            else:
                future.cancel()
                if waiter in queue:
                    queue.remove(waiter)
            self._wake()
            if isinstance(exc, TimeoutError):
                raise ReservationTimeoutError(
                    f"{owner} waited {timeout} s for {format_bytes(total)} "
                    f"({self._words(amounts)}) and was not granted: the {self.name} has "
                    f"{format_bytes(self.capacity - self.committed)} free of "
                    f"{format_bytes(self.capacity)}"
                ) from None
            raise

    def _undo(self, granted: object) -> None:
        if isinstance(granted, Reservation):
            granted.release()
        elif isinstance(granted, Allocation):
            granted.free()

    def _wake(self) -> None:
        """Grant queued waiters in order while the head fits; nobody overtakes the head."""
        for queue, limit in (
            (self._emergency_queue, self.capacity),
            (self._queue, self._limit),
        ):
            while queue:
                head = queue[0]
                if head.future.done():  # cancelled; its task has not run its cleanup yet
                    queue.popleft()
                    continue
                if self.committed + head.total > limit:
                    return
                queue.popleft()
                head.future.set_result(head.make())

    # ---- drawing on reservations (called through Reservation) -------------------

    def _draw_buffer(self, res: Reservation, level: int, nbytes: int) -> Buffer:
        cost = self.cost(nbytes)
        self._draw(res, level, cost, nbytes)
        return self._carve(level, nbytes, cost, res.owner, res)

    def _draw_charge(self, res: Reservation, level: int, nbytes: int) -> Charge:
        self._draw(res, level, nbytes, nbytes)
        return Charge(self, level, nbytes, res.owner, res)

    def _draw(self, res: Reservation, level: int, cost: int, nbytes: int) -> None:
        if res.released:
            raise ReleaseError(f"reservation of {res.owner} was released; nothing to draw on")
        if nbytes < 0:
            raise ValueError(f"cannot draw {nbytes} B")
        left = res.budget[level]
        if cost > left:
            raise OverdrawError(
                f"{res.owner} draws {format_bytes(cost)} at {self.levels(level).name} but its "
                f"reservation has {format_bytes(left)} left there: reserve enough up front"
            )
        res.budget[level] = left - cost
        res.left -= cost
        res.held[level] += cost
        res.held_total += cost
        # `_draw_level` written out: every draw of every command and page comes here.
        taken = self._taken
        taken[level] += cost
        drawn = taken[level] + self._plain[level]
        if drawn > self._level_high[level]:
            self._level_high[level] = drawn

    def _release_budget(self, res: Reservation,
                        claims: Claim | Mapping[int, int] | None) -> None:
        if res.released:
            raise ReleaseError(f"reservation of {res.owner} was already released")
        if claims is None:
            res.released = True
            total = res.left
            res.left = 0
            res.budget = [0] * len(res.budget)
            if not res.held_total:
                self._reservations.discard(res)
        else:
            total = self._take_budget(res, claims, "releases", ReleaseError).total
        self.committed -= total
        self.progress += 1
        if self._queue or self._emergency_queue:
            self._wake()

    def _split(self, res: Reservation, claims: Claim | Mapping[int, int],
               owner: str) -> Reservation:
        if res.released:
            raise ReleaseError(f"reservation of {res.owner} was released; nothing to split")
        claim = self._take_budget(res, claims, "splits off")
        part = Reservation(self, owner, claim.amounts.copy(), claim.total)
        self._reservations.add(part)
        return part

    def _transfer(self, res: Reservation, claims: Claim | Mapping[int, int],
                  to: Reservation) -> None:
        if res.released or to.released:
            raise ReleaseError(f"cannot move budget from {res.owner} to {to.owner}: one of "
                               "their reservations was released")
        if to.arena is not self or to is res:
            raise ValueError("budget moves only to another reservation of the same arena")
        claim = self._take_budget(res, claims, "moves")
        budget = to.budget
        for lvl, n in claim.pairs:
            budget[lvl] += n
        to.left += claim.total

    def _take_budget(self, res: Reservation, claims: Claim | Mapping[int, int],
                     verb: str, short: type[ArenaError] = OverdrawError) -> Claim:
        """`claims` off what `res` has left, all of it or (raising `short`) nothing."""
        claim = self._claim_of(claims)
        budget = res.budget
        # Taken first and checked after (no level is ever below 0 otherwise), so that the
        # check is one pass in C: every page made dirty and every writeback comes here.
        pairs = claim.pairs
        for lvl, n in pairs:
            budget[lvl] -= n
        if min(budget) < 0:
            for lvl, n in pairs:
                budget[lvl] += n
            lvl, n = next((lvl, n) for lvl, n in pairs if n > budget[lvl])
            raise short(
                f"{res.owner} {verb} {format_bytes(n)} at {self.levels(lvl).name} "
                f"but has only {format_bytes(budget[lvl])} left there"
            )
        res.left -= claim.total
        return claim

    def _claim_of(self, claims: Claim | Mapping[int, int]) -> Claim:
        return claims if isinstance(claims, Claim) else Claim(claims, self.levels)

    def _absorb(self, res: Reservation, other: Reservation) -> None:
        if res.released or other.released:
            raise ReleaseError(
                f"cannot merge reservations of {res.owner} and {other.owner}: one was released"
            )
        if other.arena is not self or other is res:
            raise ValueError("only another reservation of the same arena can be merged in")
        if other.held_total:
            raise ReleaseError(
                f"{other.owner} still has {format_bytes(other.held_total)} drawn: return it "
                "before merging its reservation into another"
            )
        for lvl, n in enumerate(other.budget):
            res.budget[lvl] += n
        res.left += other.left
        other.budget = [0] * len(other.budget)
        other.left = 0
        other.released = True
        self._reservations.discard(other)

    # ---- returning (called through Allocation) -----------------------------------

    def _return_allocation(self, alloc: Allocation, to_reservation: bool) -> None:
        if alloc._freed:
            raise ReleaseError(f"{alloc.describe()} was already returned: returned twice")
        alloc._freed = True
        if isinstance(alloc, Buffer):
            for seg in alloc.segments:
                seg.release()
            self._granules.free(alloc.blocks)
        lvl, cost, res = alloc.level, alloc.cost, alloc.reservation
        self.progress += 1
        if res is None:
            self._plain[lvl] -= cost
            self._allocations.discard(alloc)
        else:
            res.held[lvl] -= cost
            res.held_total -= cost
            self._taken[lvl] -= cost
            if (to_reservation or res.revolving) and not res.released:
                res.budget[lvl] += cost
                res.left += cost
                return
            if res.released and not res.held_total:
                self._reservations.discard(res)
        self.committed -= cost
        if self._queue or self._emergency_queue:
            self._wake()

    # ---- books ------------------------------------------------------------------

    def cost(self, nbytes: int) -> int:
        """What a buffer of `nbytes` costs: whole granules. Claims for buffers use this."""
        if nbytes < 0:
            raise ValueError(f"cannot allocate {nbytes} B")
        g = self.granule
        return (nbytes + g - 1) // g * g

    def free(self) -> int:
        return self.capacity - self.committed

    def direct_reclaim_allowed(self) -> bool:
        return allow_direct_reclaim(self.free(), self.emergency)

    def available(self) -> int:
        """What an ordinary request could be granted now: free memory short of the
        emergency pool."""
        return self._limit - self.committed

    @property
    def waiting(self) -> bool:
        """Someone is queued for memory (a cheap test for pressure)."""
        return bool(self._queue or self._emergency_queue)

    def queued_bytes(self) -> int:
        """What everyone queued for memory asks for, together."""
        return sum(w.total for w in (*self._emergency_queue, *self._queue))

    def _commit(self, level: int, cost: int) -> None:
        """Book a plain allocation."""
        self._book_grant(cost)
        self._draw_level(self._plain, level, cost)

    def _draw_level(self, books: list[int], level: int, cost: int) -> None:
        books[level] += cost
        drawn = self._taken[level] + self._plain[level]
        if drawn > self._level_high[level]:
            self._level_high[level] = drawn

    def _carve(
        self, level: int, nbytes: int, cost: int, owner: str, res: Reservation | None
    ) -> Buffer:
        g = self.granule
        blocks = self._granules.allocate(cost // g)
        if len(blocks) == 1:  # one run, as nearly every buffer is
            lo = blocks[0][0] * g
            return Buffer(self, level, cost, owner, res, nbytes, blocks,
                          [self._view[lo : lo + nbytes]])
        runs: list[list[int]] = []
        for start, order in sorted(blocks):
            lo, hi = start * g, (start + (1 << order)) * g
            if runs and runs[-1][1] == lo:
                runs[-1][1] = hi
            else:
                runs.append([lo, hi])
        segments: list[memoryview] = []
        left = nbytes
        view = self._view
        for lo, hi in runs:
            take = min(hi - lo, left)
            if take:
                segments.append(view[lo : lo + take])
                left -= take
        if not segments:
            segments.append(view[0:0])
        return Buffer(self, level, cost, owner, res, nbytes, blocks, segments)

    def _words(self, amounts: list[int]) -> str:
        return ", ".join(
            f"{format_bytes(n)} {self.levels(lvl).name}" for lvl, n in enumerate(amounts) if n
        ) or "nothing"

    def holdings(self) -> dict[str, list[int]]:
        """Bytes per level each owner keeps from the arena (reserved or allocated)."""
        out: dict[str, list[int]] = {}
        for res in self._reservations:
            row = out.setdefault(res.owner, [0] * len(self._taken))
            for lvl in range(len(row)):
                row[lvl] += res.budget[lvl] + res.held[lvl]
        for alloc in self._allocations:
            row = out.setdefault(alloc.owner, [0] * len(self._taken))
            row[alloc.level] += alloc.cost
        return out

    def memory_waits(self) -> list[Wait]:
        """The queued memory waiters, as wait records: the queues are the registry.

        Granted waiters leave the queue at once, so one granted but not yet
        resumed is not mistaken for one still waiting.
        """
        return [
            Wait(w.owner, WaitKind.MEMORY, self._words(w.amounts), since=w.since, need=w.total)
            for w in (*self._emergency_queue, *self._queue)
        ]

    def reservations_of(self, owner: str) -> list[Reservation]:
        return [r for r in self._reservations if r.owner == owner]

    def plain_bytes_of(self, owner: str) -> int:
        return sum(a.cost for a in self._allocations if a.owner == owner)

    def gauges(self, now: float | None = None) -> dict[str, object]:
        """Reserved, in use, waiters, oldest wait and high-water mark, per level and in all."""
        if now is None:
            try:
                now = asyncio.get_running_loop().time()
            except RuntimeError:
                now = None
        waiters = list(self._emergency_queue) + list(self._queue)
        unused = [0] * len(self._taken)
        for res in self._reservations:
            for lvl, n in enumerate(res.budget):
                unused[lvl] += n
        per_level: dict[str, dict[str, object]] = {}
        for member in self.levels:
            lvl = int(member)
            mine = [w for w in waiters if w.amounts[lvl]]
            oldest = min((w.since for w in mine), default=None)
            per_level[member.name] = {
                "reserved": unused[lvl] + self._taken[lvl],
                "in_use": self._taken[lvl] + self._plain[lvl],
                "reserved_unused": unused[lvl],
                "allocated": self._plain[lvl],
                "waiters": len(mine),
                "oldest_wait_s": None if oldest is None or now is None else now - oldest,
                "high_water": self._level_high[lvl],
            }
        oldest_all = min((w.since for w in waiters), default=None)
        return {
            "capacity": self.capacity,
            "committed": self.committed,
            "free": self.capacity - self.committed,
            "emergency": self.emergency,
            "high_water": self.high_water,
            "waiters": len(waiters),
            "oldest_wait_s": None if oldest_all is None or now is None else now - oldest_all,
            "levels": per_level,
        }


def _levels_of(amounts: list[int]) -> list[int]:
    return [lvl for lvl, n in enumerate(amounts) if n]
