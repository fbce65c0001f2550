"""The virtual-time loop: sleeps cost nothing, order is kept, runs repeat exactly."""

from __future__ import annotations

import asyncio
import heapq
import random
import selectors
import socket
from typing import Any

import pytest

from earmark.host.modeldevice import ModelDevice
from earmark.host.policy import Policy
from earmark.memory import Arena
from earmark.sim.virtualtime import StalledError, run_virtual
from earmark.sim.workload import Workload, run_writers


def _kernel_waits(patch: pytest.MonkeyPatch) -> list[float | None]:
    """The timeouts the loop's selector asks the kernel to wait for, from now on."""
    waits: list[float | None] = []
    real_select = selectors.DefaultSelector.select

    def select(self: selectors.DefaultSelector, timeout: float | None = None) -> Any:
        waits.append(timeout)
        return real_select(self, timeout)

    patch.setattr(selectors.DefaultSelector, "select", select)
    return waits


def test_an_hour_of_sleeping_takes_no_time_and_keeps_order() -> None:
    order: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        order.append(f"{name}@{asyncio.get_running_loop().time():g}")

    async def main() -> float:
        await asyncio.gather(sleeper("b", 3600), sleeper("a", 1800), sleeper("c", 3600))
        return asyncio.get_running_loop().time()

    with pytest.MonkeyPatch.context() as patch:
        waits = _kernel_waits(patch)
        assert run_virtual(main) == 3600
    # The hour passed in jumps, and with no file descriptor to look at the loop never
    # asked the kernel (no self-pipe either).
    assert waits == []
    assert order == ["a@1800", "b@3600", "c@3600"]


def test_a_real_descriptor_is_looked_at_without_waiting() -> None:
    async def main() -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()
        here, there = socket.socketpair()
        got: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            if not got.done():
                got.set_result(here.recv(8))

        try:
            loop.add_reader(here.fileno(), readable)
            await asyncio.sleep(60)  # jumps: the kernel is asked, never waited on
            there.send(b"ping")
            return await asyncio.wait_for(got, 3600), loop.time()
        finally:
            loop.remove_reader(here.fileno())
            here.close()
            there.close()

    with pytest.MonkeyPatch.context() as patch:
        waits = _kernel_waits(patch)
        assert run_virtual(main) == (b"ping", 60)
    assert waits and all(timeout == 0 for timeout in waits), waits


def test_a_stuck_simulation_says_so() -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_future()  # nothing will ever set it

    with pytest.raises(StalledError, match="no timer is set"):
        run_virtual(main)


def test_same_seed_same_run() -> None:
    def once() -> tuple[str, str | None, float, int]:
        async def main() -> tuple[str, str | None, float, int]:
            arena = Arena(256 * 1024)
            device = ModelDevice(arena, 4 << 20, latency=0.002)
            work = Workload(writers=32, pages_per_writer=16, span_pages=1024, seed=7)
            result = await run_writers(arena, device, Policy.NONE, work)
            return result.outcome, result.cycle, result.seconds, result.bytes_written

        return run_virtual(main)

    first, second = once(), once()
    assert first == second
    assert first[0] == "deadlocked"


def test_cancelled_callbacks_never_run_and_cancelled_timers_leave_the_heap() -> None:
    """What the loop's own iteration keeps of asyncio's: a cancelled handle is skipped
    (run, it would be an error for the loop's handler), cancelled timers leave the heap
    (at its head, or all at once when most of many are), and the rest fire in order at
    their times."""
    ran: list[tuple[str, float]] = []
    errors: list[dict[str, Any]] = []
    heap: list[int] = []

    async def main() -> None:
        loop: Any = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: errors.append(context))

        def note(name: str) -> None:
            ran.append((name, loop.time()))

        loop.call_soon(note, "cancelled soon").cancel()
        loop.call_later(5.0, note, "cancelled later").cancel()
        loop.call_later(7.0, note, "kept")
        many = [loop.call_later(10.0 + i, note, f"t{i}") for i in range(150)]
        for timer in many[:120]:
            timer.cancel()
        await asyncio.sleep(0)
        heap.append(len(loop._scheduled))
        fired = loop.create_future()
        loop.call_later(200.0, fired.set_result, None)
        await fired

    run_virtual(main)
    assert errors == []
    assert heap == [31]  # "kept" and t120..t149
    assert ran == [("kept", 7.0), *((f"t{i}", 10.0 + i) for i in range(120, 150))]


@pytest.mark.parametrize("debug", [False, True])
def test_the_loop_counts_each_callback_it_takes_in_either_mode(debug: bool) -> None:
    """`events` is what the simulator's speed is measured in: one per callback taken,
    in debug mode too (where the handle running is named while it runs). Debug mode is
    switched on while the loop runs, through call_soon_threadsafe (one callback more):
    a loop with no self-pipe has nothing to write to."""
    seen: list[object] = []

    async def main() -> int:
        loop: Any = asyncio.get_running_loop()
        loop.set_debug(debug)
        before = loop.events
        for _ in range(10):
            await asyncio.sleep(0)  # one task step each, nothing else ready
        handle = loop.call_soon(lambda: seen.append(loop._current_handle))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert seen == [handle if debug else None]
        return int(loop.events - before)

    assert run_virtual(main) == 1 + 10 + 1 + 2


def test_a_callback_that_raises_is_reported_as_asyncio_reports_it_and_the_loop_goes_on() -> None:
    errors: list[dict[str, Any]] = []
    ran: list[str] = []

    def fails(what: str) -> None:
        raise ValueError(what)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: errors.append(context))
        handle = loop.call_soon(fails, "soon")
        loop.call_later(1.0, fails, "later")
        loop.call_later(2.0, ran.append, "after")
        await asyncio.sleep(3.0)
        assert errors[0]["handle"] is handle

    run_virtual(main)
    assert ran == ["after"]
    assert [str(e["exception"]) for e in errors] == ["soon", "later"]
    assert all(e["message"].startswith("Exception in callback ") and "fails" in e["message"]
               for e in errors)


def test_keyboard_interrupt_in_a_callback_stops_the_loop() -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    async def main() -> None:
        asyncio.get_running_loop().call_soon(interrupt)
        await asyncio.sleep(1.0)

    with pytest.raises(KeyboardInterrupt):
        run_virtual(main)


def test_timers_due_at_the_same_time_fire_in_the_order_asyncios_heap_of_handles_gives() -> None:
    times = [random.Random(5).choice((1.0, 2.0, 3.0)) for _ in range(200)]
    reference = asyncio.new_event_loop()
    try:  # asyncio's heap of TimerHandles, pushed as the run below pushes (its sleep last)
        heap = [asyncio.TimerHandle(when, print, (i,), reference) for i, when in enumerate(times)]
        order: list[asyncio.TimerHandle] = []
        for timer in [*heap, asyncio.TimerHandle(4.0, print, (None,), reference)]:
            heapq.heappush(order, timer)
        expected = [heapq.heappop(order)._args[0] for _ in range(len(times))]
    finally:
        reference.close()
    assert expected != sorted(range(200), key=lambda i: times[i])  # ties not first come first
    fired: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for i, when in enumerate(times):
            loop.call_at(when, fired.append, i)
        await asyncio.sleep(4.0)

    run_virtual(main)
    assert fired == expected
