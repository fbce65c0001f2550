"""Hypothesis drives the arena through random reserve/cancel/draw/release interleavings.

Invariants after every step: capacity never exceeded, the books equal the sum of
what owners hold, grants respect arrival order, no reservation kept only as a
cache (a shrinker's) while anyone waits, and once every owner is done nothing is
left committed and every granule is free again.
"""

from __future__ import annotations

import asyncio

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from earmark.memory import Arena, Buffer, HostLevel, Reservation

CAPACITY = 8192
LEVELS = [int(lvl) for lvl in HostLevel]
claims_st = st.dictionaries(st.sampled_from(LEVELS), st.integers(0, 3000), min_size=1, max_size=3)


class ArenaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.arena = Arena(CAPACITY)
        self.pending: list[tuple[int, asyncio.Task[Reservation]]] = []
        self.granted: list[Reservation] = []
        self.buffers: list[Buffer] = []
        self.arrivals = 0
        self.grant_order: list[int] = []
        self.cancelled: set[int] = set()
        # Finished work's reservations kept for reuse, as the initiator does: given
        # back by the shrinker the moment anyone is about to wait.
        self.cache: list[Reservation] = []
        self.arena.add_shrinker(self.shrink)

    def shrink(self) -> None:
        cache, self.cache = self.cache, []
        for res in cache:
            res.release()

    def step(self) -> None:
        for _ in range(3):
            self.loop.run_until_complete(asyncio.sleep(0))
        still = []
        for seq, task in self.pending:
            if not task.done():
                still.append((seq, task))
            elif task.cancelled():
                self.cancelled.add(seq)
            else:
                self.granted.append(task.result())
                self.grant_order.append(seq)
        self.pending = still

    @rule(claims=claims_st)
    def reserve(self, claims: dict[int, int]) -> None:
        if sum(claims.values()) > CAPACITY:
            return
        seq = self.arrivals
        self.arrivals += 1
        task = self.loop.create_task(self.arena.reserve(claims, owner=f"o{seq}"))
        self.pending.append((seq, task))
        self.step()

    @precondition(lambda self: self.pending)
    @rule(pick=st.integers(0, 1000))
    def cancel(self, pick: int) -> None:
        self.pending[pick % len(self.pending)][1].cancel()
        self.step()

    @precondition(lambda self: self.granted)
    @rule(pick=st.integers(0, 1000), level=st.sampled_from(LEVELS), n=st.integers(0, 2000))
    def draw(self, pick: int, level: int, n: int) -> None:
        res = self.granted[pick % len(self.granted)]
        if not res.released and self.arena.cost(n) <= res.budget[level]:
            self.buffers.append(res.take(level, n))

    @precondition(lambda self: self.buffers)
    @rule(pick=st.integers(0, 1000), back=st.booleans())
    def return_buffer(self, pick: int, back: bool) -> None:
        buf = self.buffers.pop(pick % len(self.buffers))
        if back and not buf.reservation.released:  # type: ignore[union-attr]
            buf.put_back()
        else:
            buf.free()
        self.step()

    @precondition(lambda self: self.granted)
    @rule(pick=st.integers(0, 1000), part=st.booleans())
    def release(self, pick: int, part: bool) -> None:
        res = self.granted[pick % len(self.granted)]
        if res.released:
            return
        if part:
            res.release({lvl: n // 2 for lvl, n in enumerate(res.budget)})
        else:
            res.release()
            if not any(res.held):
                self.granted.remove(res)
        self.step()

    @precondition(lambda self: self.granted)
    @rule(pick=st.integers(0, 1000))
    def keep_as_cache(self, pick: int) -> None:
        res = self.granted[pick % len(self.granted)]
        if res.released or any(res.held) or self.arena.waiting:
            return  # only whole, idle reservations, and never while anyone waits
        self.granted.remove(res)
        self.cache.append(res)

    @precondition(lambda self: self.cache)
    @rule()
    def reuse_cache(self) -> None:
        self.granted.append(self.cache.pop())

    @invariant()
    def no_cache_while_anyone_waits(self) -> None:
        assert not (self.arena.waiting and self.cache)

    @invariant()
    def books_balance(self) -> None:
        arena = self.arena
        assert 0 <= arena.committed <= CAPACITY
        held = sum(sum(row) for row in arena.holdings().values())
        assert held == arena.committed
        drawn = sum(b.cost for b in self.buffers)
        assert arena._granules.free_granules * arena.granule >= CAPACITY - arena.committed
        assert arena._granules.free_granules * arena.granule == CAPACITY - drawn

    @invariant()
    def grants_in_arrival_order(self) -> None:
        # A waiter granted after another that arrived later is a barging bug, unless
        # the earlier one is still pending (impossible with FIFO) — so: sorted.
        assert self.grant_order == sorted(self.grant_order)

    def teardown(self) -> None:
        for _, task in self.pending:
            task.cancel()
        self.step()
        for buf in self.buffers:
            buf.free()
        for res in self.granted + self.cache:
            if not res.released:
                res.release()
        self.step()
        assert self.arena.committed == 0
        assert self.arena._granules.free_granules * self.arena.granule == CAPACITY
        assert self.arena.gauges()["waiters"] == 0
        self.loop.close()


ArenaMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestArenaMachine = ArenaMachine.TestCase
