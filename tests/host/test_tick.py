"""The flusher's one timer (host/tick.py): it wakes at the deadline of the wait under way,
never for a wait that is over, and leaves no timer behind once cancelled; and the
flusher is woken by its writebacks' ends, not only by that timer."""

from __future__ import annotations

import asyncio

from earmark.host.modeldevice import ModelDevice
from earmark.host.pagecache import PageCache
from earmark.host.policy import HostTuning, Policy
from earmark.host.tick import Tick
from earmark.memory import Arena
from earmark.memory.levels import PAGE_BYTES
from earmark.sim.virtualtime import run_virtual


def test_a_tick_wakes_at_the_current_waits_deadline_not_an_earlier_ones() -> None:
    async def main() -> tuple[list[float], int]:
        loop = asyncio.get_running_loop()
        woken: list[float] = []
        done: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            woken.append(loop.time())
            if not done.done():
                done.set_result(None)

        tick = Tick(wake)
        tick.arm(loop, 1.0)  # a wait that a kick ends at once
        tick.disarm()
        second = loop.create_future()
        loop.call_at(0.5, second.set_result, None)
        await second
        tick.arm(loop, 1.5)  # the wait under way when the first deadline comes
        await done
        tick.disarm()
        timers = len(loop._scheduled)  # type: ignore[attr-defined]
        return woken, timers

    woken, timers = run_virtual(main)
    assert woken == [1.5]
    assert timers == 0  # it fired: nothing is left set


def test_a_disarmed_tick_does_not_wake_and_a_cancelled_one_leaves_no_timer() -> None:
    async def main() -> tuple[list[float], int, int]:
        loop = asyncio.get_running_loop()
        woken: list[float] = []
        tick = Tick(lambda: woken.append(loop.time()))
        tick.arm(loop, 1.0)
        tick.disarm()
        later = loop.create_future()
        loop.call_at(2.0, later.set_result, None)
        await later
        tick.arm(loop, 3.0)
        set_before = sum(not t.cancelled() for t in loop._scheduled)  # type: ignore[attr-defined]
        tick.cancel()
        set_after = sum(not t.cancelled() for t in loop._scheduled)  # type: ignore[attr-defined]
        return woken, set_before, set_after

    woken, set_before, set_after = run_virtual(main)
    assert woken == []
    assert (set_before, set_after) == (1, 0)


def test_a_finished_background_writeback_wakes_the_flusher_for_the_next() -> None:
    """At depth 1 the flusher waits on its one writeback; when that ends it must take the
    next request at once, not a second later when its timer would look again."""
    tuning = HostTuning(background_ratio=0.0, writeback_depth=1, max_request_pages=4)

    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        arena = Arena(1 << 20)
        device = ModelDevice(arena, 1 << 20, latency=0.001)
        cache = PageCache(arena, device, Policy.RESERVE, tuning)
        for index in (0, 8, 16, 24):  # four requests: no two pages share a window
            await cache.pwrite(index * PAGE_BYTES, bytes(PAGE_BYTES), owner="w")
        cache.start()  # nothing dirties a page from now on: only writebacks kick it
        while cache.dirty or cache.inflight:
            cache._changed.clear()
            await cache._changed.wait()
        done = loop.time()
        await cache.close()
        return device.writes, done

    writes, done = run_virtual(main)
    assert writes == 4
    assert done < 0.5  # four writes of a millisecond, one after another; the timer is at 1 s
