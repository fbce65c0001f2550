"""Arena reservations: all-or-nothing, FIFO, cancel-safe; the Go semaphore.Weighted cases."""

from __future__ import annotations

import asyncio
import threading

import pytest

from earmark.memory import (
    Arena,
    ClaimTooLargeError,
    HostLevel,
    NoReservationError,
    OverdrawError,
    ReleaseError,
    ReservationTimeoutError,
    ThreadArena,
    current_reservation,
)

PAGE, REQUEST, TASK, WIRE = HostLevel.PAGE, HostLevel.REQUEST, HostLevel.TASK, HostLevel.WIRE
KIB = 1024


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_reserve_is_all_or_nothing_across_levels() -> None:
    async def main() -> None:
        arena = Arena(16 * KIB)
        a = await arena.reserve({PAGE: 8 * KIB, TASK: 4 * KIB}, owner="a")
        assert arena.committed == 12 * KIB
        # 4 KiB free: a claim of 4 KiB PAGE + 64 B WIRE must not get the PAGE part alone.
        waiter = asyncio.ensure_future(arena.reserve({PAGE: 4 * KIB, WIRE: 64}, owner="b"))
        await settle()
        assert not waiter.done() and arena.committed == 12 * KIB
        a.release({TASK: 64})
        b = await asyncio.wait_for(waiter, 1)
        assert b.budget[PAGE] == 4 * KIB and b.budget[WIRE] == 64
        assert arena.committed == 16 * KIB - 64 + 64

    run(main())


def test_large_claim_is_not_starved_by_small_ones() -> None:
    async def main() -> None:
        arena = Arena(10 * KIB)
        first = await arena.reserve({PAGE: 1 * KIB}, owner="first")
        big = asyncio.ensure_future(arena.reserve({PAGE: 10 * KIB}, owner="big"))
        await settle()
        smalls = [
            asyncio.ensure_future(arena.reserve({PAGE: 1 * KIB}, owner=f"small-{i}"))
            for i in range(5)
        ]
        await settle()
        assert not big.done()
        assert not any(s.done() for s in smalls), "a small claim barged past the big one"
        first.release()
        got = await asyncio.wait_for(big, 1)
        await settle()
        assert not any(s.done() for s in smalls)
        got.release()
        for s in smalls:
            (await asyncio.wait_for(s, 1)).release()
        assert arena.committed == 0

    run(main())


def test_cancelled_head_wakes_the_waiters_behind_it() -> None:
    async def main() -> None:
        arena = Arena(10 * KIB)
        held = await arena.reserve({PAGE: 5 * KIB}, owner="held")
        head = asyncio.ensure_future(arena.reserve({PAGE: 10 * KIB}, owner="head"))
        await settle()
        behind = asyncio.ensure_future(arena.reserve({PAGE: 5 * KIB}, owner="behind"))
        await settle()
        assert not behind.done(), "FIFO: the follower must wait behind the head"
        head.cancel()
        got = await asyncio.wait_for(behind, 1)
        assert arena.committed == 10 * KIB
        got.release()
        held.release()
        assert arena.committed == 0 and arena.gauges()["waiters"] == 0

    run(main())


def test_oversize_claim_fails_at_once_and_blocks_nobody() -> None:
    async def main() -> None:
        arena = Arena(10 * KIB)
        with pytest.raises(ClaimTooLargeError, match="can never grant more than 10 KiB"):
            await arena.reserve({PAGE: 8 * KIB, WIRE: 4 * KIB}, owner="greedy")
        res = await asyncio.wait_for(arena.reserve({PAGE: 10 * KIB}, owner="fits"), 1)
        assert res.total() == 10 * KIB

    run(main())


def test_timeout_leaves_exact_books() -> None:
    async def main() -> None:
        arena = Arena(4 * KIB)
        held = await arena.reserve({PAGE: 4 * KIB}, owner="held")
        with pytest.raises(ReservationTimeoutError, match="was not granted"):
            await arena.reserve({PAGE: 64}, owner="late", timeout=0.01)
        assert arena.gauges()["waiters"] == 0
        held.release()
        assert arena.committed == 0

    run(main())


def test_granted_then_cancelled_gives_the_grant_back() -> None:
    async def main() -> None:
        arena = Arena(4 * KIB)
        held = await arena.reserve({PAGE: 4 * KIB}, owner="held")
        waiter = asyncio.ensure_future(arena.reserve({PAGE: 4 * KIB}, owner="w"))
        await settle()
        held.release()  # grants the waiter's future now ...
        waiter.cancel()  # ... and the task is cancelled before it resumes
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert arena.committed == 0

    run(main())


def test_draws_returns_and_misuse() -> None:
    async def main() -> None:
        arena = Arena(64 * KIB)
        res = await arena.reserve({PAGE: 8 * KIB, TASK: 128}, owner="w")
        page = res.take(PAGE, 4 * KIB)
        assert page.nbytes == 4 * KIB and len(page.view) == 4 * KIB
        page.view[:5] = b"hello"
        desc = res.charge(TASK, 48)
        assert res.budget[PAGE] == 4 * KIB and res.held[TASK] == 48
        with pytest.raises(OverdrawError, match="has 4 KiB left"):
            res.take(PAGE, 8 * KIB)
        page.put_back()
        with pytest.raises(ReleaseError, match="twice"):
            page.put_back()
        assert res.budget[PAGE] == 8 * KIB
        desc.free()  # gone from the reservation for good
        assert arena.committed == 8 * KIB + 128 - 48
        with pytest.raises(ReleaseError, match="has only"):
            res.release({TASK: 4 * KIB})
        res.release()
        with pytest.raises(ReleaseError, match="already released"):
            res.release()
        assert arena.committed == 0

    run(main())


def test_split_and_handoff_move_memory_between_owners() -> None:
    async def main() -> None:
        arena = Arena(64 * KIB)
        res = await arena.reserve({PAGE: 4 * KIB, REQUEST: 256, TASK: 64}, owner="writer")
        share = res.split({REQUEST: 256, TASK: 64}, owner="flusher")
        assert arena.holdings()["flusher"][REQUEST] == 256
        assert arena.holdings()["writer"][PAGE] == 4 * KIB
        with pytest.raises(OverdrawError):
            res.split({TASK: 1}, owner="again")
        res.handoff("cache")
        assert "writer" not in arena.holdings() and arena.holdings()["cache"][PAGE] == 4 * KIB
        share.release()
        res.release()
        assert arena.committed == 0

    run(main())


def test_absorb_merges_what_is_left() -> None:
    async def main() -> None:
        arena = Arena(64 * KIB)
        a = await arena.reserve({REQUEST: 256, TASK: 64}, owner="page-1")
        b = await arena.reserve({REQUEST: 256, WIRE: 64}, owner="page-2")
        a.absorb(b)
        assert a.budget[REQUEST] == 512 and a.budget[WIRE] == 64 and b.released
        assert arena.committed == 256 * 2 + 64 * 2
        with pytest.raises(ReleaseError, match="one was released"):
            a.absorb(b)
        c = await arena.reserve({TASK: 64}, owner="page-3")
        drawn = c.charge(TASK, 64)
        with pytest.raises(ReleaseError, match="still has 64 B drawn"):
            a.absorb(c)
        drawn.free()
        c.release()
        a.release()
        assert arena.committed == 0

    run(main())


def test_current_reservation_is_handed_down_through_context() -> None:
    async def deeper() -> int:
        return current_reservation().take(WIRE, 48).nbytes

    async def main() -> None:
        arena = Arena(64 * KIB)
        with pytest.raises(NoReservationError, match="handed down"):
            current_reservation()
        res = await arena.reserve({WIRE: 64}, owner="task")
        with res.active():
            assert await asyncio.create_task(deeper()) == 48  # child tasks inherit it
        with pytest.raises(NoReservationError):
            current_reservation()
        assert res.held[WIRE] == 64  # 48 B costs one 64-byte granule

    run(main())


def test_buffers_are_real_disjoint_slices_of_the_arena() -> None:
    async def main() -> None:
        arena = Arena(16 * KIB, granule=4096)
        res = await arena.reserve({PAGE: 16 * KIB}, owner="w")
        bufs = [res.take(PAGE, 4 * KIB) for _ in range(4)]
        for i, b in enumerate(bufs):
            b.view[:] = bytes([i]) * 4096
        assert [b.view[0] for b in bufs] == [0, 1, 2, 3]
        bufs[0].put_back()
        bufs[2].put_back()
        # Fragmented: a buffer of 8 KiB still comes, as two runs.
        two = res.take(PAGE, 8 * KIB)
        assert sum(len(s) for s in two.segments) == 8 * KIB
        two.write(b"x" * 8192)
        assert two.tobytes() == b"x" * 8192 and bufs[1].view[0] == 1
        stale = bufs[1].view
        bufs[1].free()
        with pytest.raises(ValueError):
            stale[0]  # a freed buffer's view is released, not left aliasing someone else

    run(main())


def test_plain_allocation_reclaim_and_emergency_pool() -> None:
    async def main() -> None:
        arena = Arena(16 * KIB, emergency=4 * KIB)
        pages = [await arena.allocate(PAGE, 4 * KIB, owner="w") for _ in range(3)]
        assert arena.free() == 4 * KIB
        calls: list[tuple[int, int]] = []

        async def reclaim(level: int, nbytes: int) -> int:
            calls.append((level, nbytes))
            # Reclaim runs as PF_MEMALLOC: it may use the emergency pool.
            extra = await arena.allocate(TASK, 1 * KIB, owner="reclaimer")
            extra.free()
            pages.pop().free()
            return 4 * KIB

        arena.reclaim = reclaim
        again = await asyncio.wait_for(arena.allocate(PAGE, 4 * KIB, owner="w"), 1)
        assert calls == [(PAGE, 4 * KIB)] and again.nbytes == 4 * KIB
        arena.reclaim = None
        # Ordinary allocations stop short of the pool ...
        with pytest.raises(ReservationTimeoutError):
            await arena.allocate(PAGE, 4 * KIB, owner="w", timeout=0.01)
        # ... receive paths may use it.
        with arena.memalloc():
            rx = await asyncio.wait_for(arena.allocate(WIRE, 4 * KIB, owner="rx"), 1)
        assert arena.free() == 0
        for b in [*pages, again, rx]:
            b.free()
        assert arena.committed == 0

    run(main())


def test_shrinkers_give_a_cache_back_before_anyone_waits() -> None:
    async def main() -> None:
        arena = Arena(16 * KIB)
        cache: list[object] = [await arena.reserve({TASK: 8 * KIB}, owner="cache")]
        calls = 0

        def shrink() -> None:
            nonlocal calls
            calls += 1
            for res in cache:
                res.release()  # type: ignore[attr-defined]
            cache.clear()

        arena.add_shrinker(shrink)
        small = await arena.reserve({TASK: 8 * KIB}, owner="small")  # fits: cache kept
        assert calls == 0 and arena.committed == 16 * KIB
        small.release()
        # Needs the cached bytes: the cache goes back and the claim is granted at once.
        big = await asyncio.wait_for(arena.reserve({PAGE: 16 * KIB}, owner="big"), 1.0)
        assert calls == 1 and cache == [] and arena.committed == 16 * KIB
        big.release()
        # The same for allocations that must not wait (a receive path).
        cache.append(await arena.reserve({TASK: 16 * KIB}, owner="cache"))
        charge = arena.allocate_charge_now(WIRE, 4 * KIB, owner="reader")
        assert charge is not None and calls == 2
        charge.free()
        arena.remove_shrinker(shrink)
        held = await arena.reserve({TASK: 16 * KIB}, owner="held")
        assert arena.allocate_charge_now(WIRE, 4 * KIB, owner="reader") is None and calls == 2
        held.release()

    run(main())


def test_gauges_report_per_level() -> None:
    async def main() -> None:
        arena = Arena(16 * KIB)
        res = await arena.reserve({PAGE: 8 * KIB, WIRE: 64}, owner="w")
        res.take(PAGE, 4 * KIB)
        plain = await arena.allocate(TASK, 100, owner="p")
        waiting = asyncio.ensure_future(arena.reserve({PAGE: 16 * KIB}, owner="big"))
        await settle()
        g = arena.gauges()
        levels = g["levels"]
        assert isinstance(levels, dict)
        assert levels["PAGE"]["reserved"] == 8 * KIB
        assert levels["PAGE"]["in_use"] == 4 * KIB
        assert levels["PAGE"]["waiters"] == 1
        assert levels["TASK"]["in_use"] == 128
        assert levels["PAGE"]["oldest_wait_s"] is not None
        assert g["committed"] == 8 * KIB + 64 + 128 and g["waiters"] == 1
        waiting.cancel()
        await settle()
        plain.free()
        res.release()
        assert arena.gauges()["high_water"] == 8 * KIB + 64 + 128

    run(main())


def test_thread_facade() -> None:
    async def main() -> None:
        arena = Arena(16 * KIB)
        facade = ThreadArena(arena, asyncio.get_running_loop())
        results: list[int] = []

        def worker() -> None:
            res = facade.reserve({PAGE: 4 * KIB}, owner="thread")
            buf = facade.take(res, PAGE, 4 * KIB)
            results.append(buf.nbytes)
            facade.free(buf)
            facade.release(res)

        thread = threading.Thread(target=worker)
        thread.start()
        await asyncio.to_thread(thread.join)  # the loop stays free to serve its calls
        assert results == [4 * KIB] and arena.committed == 0
        with pytest.raises(RuntimeError, match="own event loop"):
            facade.call(arena.free)

    run(main())
