"""The deadlock detector names real cycles and stays quiet while the system can progress."""

from __future__ import annotations

import asyncio

import pytest

from earmark.memory import Arena, Buffer, HostLevel, LevelOrderError, Watchdog, find_deadlock
from earmark.memory.validator import check_level_order
from earmark.memory.waits import Wait, WaitKind

PAGE, TASK, WIRE = HostLevel.PAGE, HostLevel.TASK, HostLevel.WIRE
KIB = 1024


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class MiniCache:
    """Writers dirty pages with plain allocation; a flusher cleans them (policy `none`)."""

    def __init__(self, arena: Arena) -> None:
        self.arena = arena
        self.dirty: list[Buffer] = []
        self.kick = asyncio.Event()
        arena.waits.set_passive("cache", freed_by=("flusher",))

    async def writer(self, name: str, pages: int) -> None:
        for _ in range(pages):
            page = await self.arena.allocate(PAGE, 4 * KIB, owner=name)
            page.handoff("cache")
            self.dirty.append(page)
            if self.arena.free() - self.arena.emergency < 4 * KIB:
                self.kick.set()

    async def flusher(self) -> None:
        while True:
            await self.kick.wait()
            self.kick.clear()
            while self.dirty:
                # Writeback needs a command descriptor and a receive buffer: memory.
                task = await self.arena.allocate(TASK, 64, owner="flusher")
                rx = await self.arena.allocate(WIRE, 64, owner="flusher")
                page = self.dirty.pop()
                page.free()
                rx.free()
                task.free()


def test_writeback_deadlock_is_named() -> None:
    async def main() -> None:
        arena = Arena(16 * KIB)
        cache = MiniCache(arena)
        flusher = asyncio.create_task(cache.flusher())
        writers = [asyncio.create_task(cache.writer(f"writer-{i}", 10)) for i in range(3)]
        await settle()
        report = find_deadlock(arena)
        assert report is not None, "memory is full of dirty pages and nothing can clean them"
        text = report.cycle
        assert "flusher holds nothing → waits for 64 B TASK" in text
        assert "cache holds 16 KiB PAGE → freed only by flusher" in report.stuck
        assert any(line.startswith("writer-") and "4 KiB PAGE" in line for line in report.stuck)
        assert text.endswith("arena 100% full (16 KiB of 16 KiB)")
        for t in [flusher, *writers]:
            t.cancel()
        await asyncio.gather(flusher, *writers, return_exceptions=True)

    asyncio.run(main())


def test_emergency_pool_lets_writeback_progress_and_no_false_alarm() -> None:
    async def main() -> None:
        arena = Arena(16 * KIB, emergency=1 * KIB)
        cache = MiniCache(arena)

        async def flusher() -> None:
            with arena.memalloc():  # the writeback path may use the pool, as with PF_MEMALLOC
                await cache.flusher()

        flusher_task = asyncio.create_task(flusher())
        writers = [asyncio.create_task(cache.writer(f"writer-{i}", 10)) for i in range(3)]
        alarms = steps = 0
        while not all(w.done() for w in writers) and steps < 10_000:
            alarms += find_deadlock(arena) is not None
            steps += 1
            await asyncio.sleep(0)
        assert alarms == 0
        assert all(w.exception() is None for w in writers)
        flusher_task.cancel()

    asyncio.run(main())


def test_holder_waiting_for_the_peer_is_live() -> None:
    async def main() -> None:
        arena = Arena(8 * KIB)
        inflight = await arena.reserve({TASK: 8 * KIB}, owner="cmd-1")
        waiter = asyncio.ensure_future(arena.reserve({PAGE: 4 * KIB}, owner="writer"))
        await settle()
        with arena.waits.waiting("cmd-1", "response to ITT 1"):
            assert find_deadlock(arena) is None  # the response will come and free 8 KiB
        # Without the peer to wait for, cmd-1 is simply running: still live.
        assert find_deadlock(arena) is None
        # cmd-1 now waits for the writer (who waits for memory cmd-1 holds): a cycle.
        with arena.waits.waiting("cmd-1", "the writer's page", wakers=("writer",)):
            report = find_deadlock(arena)
            assert report is not None
            assert report.stuck == (
                "cmd-1 holds 8 KiB TASK → waits for the writer's page",
                "writer holds nothing → waits for 4 KiB PAGE",
            )
        inflight.release()
        (await waiter).release()

    asyncio.run(main())


def test_wait_records_carry_layer_words() -> None:
    async def main() -> None:
        arena = Arena(4 * KIB)
        held = await arena.reserve({PAGE: 4 * KIB}, owner="writer-3")
        token = arena.waits.register(
            Wait("writer-3", WaitKind.MEMORY, "4 KiB PAGE", holds="1 dirty page", need=4096)
        )
        report = find_deadlock(arena)
        assert report is not None
        assert report.stuck == ("writer-3 holds 1 dirty page → waits for 4 KiB PAGE",)
        arena.waits.unregister(token)
        held.release()

    asyncio.run(main())


def test_watchdog_fires_only_on_a_stall_with_waiters() -> None:
    dog = Watchdog(timeout=5.0)
    assert not dog.stalled(0.0, progress=1, waiting=True)
    assert not dog.stalled(4.0, progress=1, waiting=True)
    assert dog.stalled(5.0, progress=1, waiting=True)
    assert not dog.stalled(6.0, progress=2, waiting=True)
    assert not dog.stalled(20.0, progress=2, waiting=False)


def test_validator_rejects_waiting_while_holding() -> None:
    async def main() -> None:
        arena = Arena(64 * KIB)
        arena.validator = check_level_order
        res = await arena.reserve({PAGE: 4 * KIB, TASK: 64}, owner="writer")
        # Shallower than anything held: allowed.
        app = await arena.reserve({HostLevel.APP: 64}, owner="writer")
        app.release()
        with pytest.raises(LevelOrderError, match="holder of PAGE never waits for PAGE or deeper"):
            await arena.reserve({WIRE: 64}, owner="writer")
        res.release()
        await arena.reserve({PAGE: 4 * KIB}, owner="writer")  # holding nothing: fine
        plain = await arena.allocate(TASK, 64, owner="loose")
        arena_full = asyncio.ensure_future(arena.reserve({PAGE: 60 * KIB}, owner="big"))
        await settle()
        with pytest.raises(LevelOrderError, match="outside any reservation"):
            await arena.allocate(PAGE, 4 * KIB, owner="loose")
        arena_full.cancel()
        plain.free()

    asyncio.run(main())
