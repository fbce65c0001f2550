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
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from enum import IntEnum

from earmark.memory.allocation import Allocation, Buffer, Charge
from earmark.memory.buddy import BuddyAllocator
from earmark.memory.errors import (
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

Validator = Callable[["Arena", str, list[int], bool], None]
"""Called as (arena, owner, levels asked, is_reservation) before any wait or reservation."""


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % (size // 16) == 0:
            return f"{n / size:g} {unit}"
    return f"{n} B"


class _Waiter:
    __slots__ = ("amounts", "emergency", "future", "make", "owner", "since", "token", "total")

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
        self.token = -1


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
        self._memory = bytearray(capacity)
        self._view = memoryview(self._memory)
        self._granules = BuddyAllocator(capacity // granule)
        self._budget = [0] * nlevels  # reserved, not yet drawn
        self._taken = [0] * nlevels  # drawn from reservations
        self._plain = [0] * nlevels  # allocated without a reservation
        self._level_high = [0] * nlevels
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

    # ---- reserving --------------------------------------------------------------

    async def reserve(
        self,
        claims: Mapping[int, int],
        *,
        owner: str,
        timeout: float | None = None,
    ) -> Reservation:
        """Everything `claims` asks for, at once, in arrival order; wait holding nothing."""
        amounts, total = self._amounts(claims)
        if total > self.capacity - self.emergency:
            raise ClaimTooLargeError(
                f"{owner} claims {format_bytes(total)} ({self._words(amounts)}) but the "
                f"{self.name} can never grant more than "
                f"{format_bytes(self.capacity - self.emergency)}: raise its capacity "
                "or claim less"
            )
        if self.validator is not None:
            self.validator(self, owner, _levels_of(amounts), True)
        if (
            not self._queue
            and not self._emergency_queue
            and self.committed + total <= self.capacity - self.emergency
        ):
            return self._grant_reservation(amounts, total, owner)
        res = await self._wait(
            amounts, total, owner, False, timeout,
            lambda: self._grant_reservation(amounts, total, owner),
        )
        assert isinstance(res, Reservation)
        return res

    def _grant_reservation(self, amounts: list[int], total: int, owner: str) -> Reservation:
        budget = self._budget
        for lvl, n in enumerate(amounts):
            if n:
                budget[lvl] += n
        self._commit(total, amounts)
        res = Reservation(self, owner, amounts)
        self._reservations.add(res)
        return res

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

    @contextmanager
    def memalloc(self) -> Iterator[None]:
        """Mark the enclosed code as a reclaim/receive path (PF_MEMALLOC): it may use the
        emergency pool."""
        token = _MEMALLOC.set(True)
        try:
            yield
        finally:
            _MEMALLOC.reset(token)

    async def _allocate(
        self,
        level: int,
        cost: int,
        owner: str,
        timeout: float | None,
        make: Callable[[], Allocation],
    ) -> object:
        amounts = self._amounts({level: cost})[0]
        emergency = _MEMALLOC.get()
        limit = self.capacity if emergency else self.capacity - self.emergency
        if cost > limit:
            raise ClaimTooLargeError(
                f"{owner} asks for {format_bytes(cost)} at {self.levels(level).name} but "
                f"the {self.name} can never grant more than {format_bytes(limit)}"
            )
        if self._can_grant_now(cost, emergency):
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
        return await self._wait(amounts, cost, owner, emergency, timeout, make)

    def _can_grant_now(self, cost: int, emergency: bool) -> bool:
        if emergency:
            # PF_MEMALLOC does not queue behind ordinary allocations.
            return not self._emergency_queue and self.committed + cost <= self.capacity
        return (
            not self._queue
            and not self._emergency_queue
            and self.committed + cost <= self.capacity - self.emergency
        )

    def _plain_buffer(self, level: int, nbytes: int, cost: int, owner: str) -> Buffer:
        self._plain[level] += cost
        self._commit(cost, None, level)
        buf = self._carve(level, nbytes, cost, owner, None)
        self._allocations.add(buf)
        return buf

    def _plain_charge(self, level: int, nbytes: int, owner: str) -> Charge:
        self._plain[level] += nbytes
        self._commit(nbytes, None, level)
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
        waiter.token = self.waits.register(
            Wait(owner, WaitKind.MEMORY, self._words(amounts), since=now, need=total)
        )
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
        finally:
            self.waits.unregister(waiter.token)

    def _undo(self, granted: object) -> None:
        if isinstance(granted, Reservation):
            granted.release()
        elif isinstance(granted, Allocation):
            granted.free()

    def _wake(self) -> None:
        """Grant queued waiters in order while the head fits; nobody overtakes the head."""
        for queue, limit in (
            (self._emergency_queue, self.capacity),
            (self._queue, self.capacity - self.emergency),
        ):
            while queue:
                head = queue[0]
                if head.future.done():  # cancelled; its task has not run its cleanup yet
                    queue.popleft()
                    continue
                if self.committed + head.total > limit:
                    return
                queue.popleft()
                # Granted is no longer waiting, even before its task resumes.
                self.waits.unregister(head.token)
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
        res.held[level] += cost
        self._budget[level] -= cost
        self._taken[level] += cost

    def _release_budget(self, res: Reservation, claims: Mapping[int, int] | None) -> None:
        if res.released:
            raise ReleaseError(f"reservation of {res.owner} was already released")
        if claims is None:
            amounts = list(res.budget)
            res.released = True
        else:
            amounts = self._amounts(claims)[0]
            for lvl, n in enumerate(amounts):
                if n > res.budget[lvl]:
                    raise ReleaseError(
                        f"{res.owner} releases {format_bytes(n)} at {self.levels(lvl).name} "
                        f"but has only {format_bytes(res.budget[lvl])} left there"
                    )
        total = 0
        for lvl, n in enumerate(amounts):
            if n:
                res.budget[lvl] -= n
                self._budget[lvl] -= n
                total += n
        self._uncommit(total)
        if res.released and not any(res.held):
            self._reservations.discard(res)
        self._wake()

    def _split(self, res: Reservation, claims: Mapping[int, int], owner: str) -> Reservation:
        if res.released:
            raise ReleaseError(f"reservation of {res.owner} was released; nothing to split")
        amounts = self._amounts(claims)[0]
        for lvl, n in enumerate(amounts):
            if n > res.budget[lvl]:
                raise OverdrawError(
                    f"{res.owner} splits off {format_bytes(n)} at {self.levels(lvl).name} "
                    f"but has only {format_bytes(res.budget[lvl])} left there"
                )
        for lvl, n in enumerate(amounts):
            res.budget[lvl] -= n
        part = Reservation(self, owner, amounts)
        self._reservations.add(part)
        return part

    # ---- returning (called through Allocation) -----------------------------------

    def _return_allocation(self, alloc: Allocation, to_reservation: bool) -> None:
        if isinstance(alloc, Buffer):
            for seg in alloc.segments:
                seg.release()
            self._granules.free(alloc.blocks)
        lvl, cost, res = alloc.level, alloc.cost, alloc.reservation
        self.progress += 1
        if res is None:
            self._plain[lvl] -= cost
            self._allocations.discard(alloc)
            self._uncommit(cost)
        else:
            res.held[lvl] -= cost
            self._taken[lvl] -= cost
            if to_reservation and not res.released:
                res.budget[lvl] += cost
                self._budget[lvl] += cost
                return
            self._uncommit(cost)
            if res.released and not any(res.held):
                self._reservations.discard(res)
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

    def _commit(self, total: int, amounts: list[int] | None, level: int = 0) -> None:
        self.committed += total
        self.progress += 1
        if self.committed > self.high_water:
            self.high_water = self.committed
        levels = range(len(self._budget)) if amounts is not None else (level,)
        for lvl in levels:
            if amounts is not None and not amounts[lvl]:
                continue
            used = self._budget[lvl] + self._taken[lvl] + self._plain[lvl]
            if used > self._level_high[lvl]:
                self._level_high[lvl] = used

    def _uncommit(self, total: int) -> None:
        self.committed -= total

    def _carve(
        self, level: int, nbytes: int, cost: int, owner: str, res: Reservation | None
    ) -> Buffer:
        g = self.granule
        blocks = self._granules.allocate(cost // g)
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

    def _amounts(self, claims: Mapping[int, int]) -> tuple[list[int], int]:
        amounts = [0] * len(self._budget)
        total = 0
        for lvl, n in claims.items():
            if not 0 <= lvl < len(amounts):
                raise ValueError(f"level {lvl} is not one of {[m.name for m in self.levels]}")
            if n < 0:
                raise ValueError(f"cannot claim {n} B at {self.levels(lvl).name}")
            amounts[lvl] += n
            total += n
        return amounts, total

    def _words(self, amounts: list[int]) -> str:
        return ", ".join(
            f"{format_bytes(n)} {self.levels(lvl).name}" for lvl, n in enumerate(amounts) if n
        ) or "nothing"

    def holdings(self) -> dict[str, list[int]]:
        """Bytes per level each owner keeps from the arena (reserved or allocated)."""
        out: dict[str, list[int]] = {}
        for res in self._reservations:
            row = out.setdefault(res.owner, [0] * len(self._budget))
            for lvl in range(len(row)):
                row[lvl] += res.budget[lvl] + res.held[lvl]
        for alloc in self._allocations:
            row = out.setdefault(alloc.owner, [0] * len(self._budget))
            row[alloc.level] += alloc.cost
        return out

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
        per_level: dict[str, dict[str, object]] = {}
        for member in self.levels:
            lvl = int(member)
            mine = [w for w in waiters if w.amounts[lvl]]
            oldest = min((w.since for w in mine), default=None)
            per_level[member.name] = {
                "reserved": self._budget[lvl] + self._taken[lvl],
                "in_use": self._taken[lvl] + self._plain[lvl],
                "reserved_unused": self._budget[lvl],
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
