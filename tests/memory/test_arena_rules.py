"""Arena entry points the stateful test does not drive: granting at once or not at all
(`reserve_now`, `allocate_charge_now`), plain charges that wait, drawing on what was
handed down (`earmark.memory.draw`), and the level validator's rule at its boundary.

Written against the mutants benchmarks/mutation.py found alive in memory/.
"""

from __future__ import annotations

import asyncio

import pytest

from earmark.memory import Arena, HostLevel, LevelOrderError, ThreadArena, check_level_order
from earmark.memory.draw import draw_buffer, draw_charge

PAGE, REQUEST, TASK, WIRE = HostLevel.PAGE, HostLevel.REQUEST, HostLevel.TASK, HostLevel.WIRE
KIB = 1024


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def row(**levels: int) -> list[int]:
    out = [0] * len(HostLevel)
    for name, n in levels.items():
        out[HostLevel[name]] = n
    return out


def test_reserve_now_grants_the_whole_claim_at_once_or_nothing_and_never_queues() -> None:
    async def main() -> None:
        arena = Arena(8 * KIB)
        res = arena.reserve_now({PAGE: 4 * KIB, WIRE: 64}, owner="a")
        assert res is not None and res.owner == "a"
        assert arena.holdings() == {"a": row(PAGE=4 * KIB, WIRE=64)}
        assert arena.committed == arena.high_water == 4 * KIB + 64
        assert arena.reserve_now({PAGE: 4 * KIB}, owner="b") is None  # 64 B short
        assert arena.committed == 4 * KIB + 64 and not arena.waiting
        exact = arena.reserve_now(arena.claim({PAGE: 4 * KIB - 64}), owner="b")
        assert exact is not None and arena.committed == arena.capacity
        exact.release()
        # A waiter queued first is never overtaken, even by a claim that would fit.
        waiter = asyncio.create_task(arena.reserve({PAGE: 8 * KIB}, owner="c"))
        await settle()
        assert arena.reserve_now({WIRE: 64}, owner="d") is None
        assert arena.allocate_charge_now(TASK, 64, owner="d") is None
        res.release()
        (await waiter).release()
        assert arena.committed == 0

    asyncio.run(main())


def test_reserve_now_is_checked_by_the_validator() -> None:
    arena = Arena(8 * KIB)
    arena.validator = check_level_order
    res = arena.reserve_now({REQUEST: 256}, owner="w")
    assert res is not None
    with pytest.raises(LevelOrderError):
        arena.reserve_now({TASK: 64}, owner="w")  # holds REQUEST, asks for deeper


def test_a_plain_charge_waits_for_room_and_is_booked_at_its_level_to_its_owner() -> None:
    async def main() -> None:
        arena = Arena(1 * KIB)
        first = await arena.allocate_charge(TASK, 600, owner="a")
        assert arena.holdings() == {"a": row(TASK=600)} and arena.plain_bytes_of("a") == 600
        second = asyncio.create_task(arena.allocate_charge(WIRE, 600, owner="b"))
        await settle()
        assert not second.done() and arena.waiting
        first.free()
        charge = await second
        assert arena.holdings() == {"b": row(WIRE=600)}
        assert (charge.level, charge.cost, charge.owner) == (WIRE, 600, "b")
        charge.free()
        assert arena.committed == 0

    asyncio.run(main())


def test_draws_take_from_the_handed_down_reservation_else_from_the_arena() -> None:
    async def main() -> None:
        arena = Arena(64 * KIB)
        buf = await draw_buffer(arena, WIRE, 100, owner="w")
        charge = await draw_charge(arena, TASK, 48, owner="w")
        assert (buf.nbytes, buf.level, charge.cost, charge.level) == (100, WIRE, 48, TASK)
        assert arena.holdings() == {"w": row(TASK=48, WIRE=128)}  # a 64-byte granule
        buf.free()
        charge.free()
        res = await arena.reserve({TASK: 64, WIRE: 128}, owner="cmd")
        with res.active():
            buf = await draw_buffer(arena, WIRE, 100, owner="w")
            charge = await draw_charge(arena, TASK, 48, owner="w")
        assert arena.plain_bytes_of("w") == 0, "under a reservation nothing is allocated"
        assert arena.committed == 192
        assert (res.budget[WIRE], res.budget[TASK]) == (0, 16)
        assert (buf.nbytes, charge.cost) == (100, 48)
        assert buf.reservation is res and charge.reservation is res

    asyncio.run(main())


def test_the_validator_allows_shallower_levels_and_refuses_the_held_one_or_deeper() -> None:
    async def main() -> None:
        arena = Arena(64 * KIB)
        arena.validator = check_level_order
        res = await arena.reserve({TASK: 64}, owner="w")
        (await arena.reserve({REQUEST: 256}, owner="w")).release()  # shallower: fine
        for deeper in (TASK, WIRE):
            with pytest.raises(LevelOrderError):
                await arena.reserve({deeper: 64}, owner="w")
        res.release()
        (await arena.reserve({WIRE: 64}, owner="w")).release()  # holding nothing: fine
        plain = await arena.allocate(PAGE, 64, owner="p")
        with pytest.raises(LevelOrderError):
            await arena.reserve({HostLevel.APP: 64}, owner="p")  # holds plain memory
        plain.free()

    asyncio.run(main())


def test_a_thread_allocates_through_the_facade_and_the_books_name_it() -> None:
    async def main() -> None:
        arena = Arena(16 * KIB)
        facade = ThreadArena(arena, asyncio.get_running_loop())
        seen: list[int] = []

        def worker() -> None:
            buf = facade.allocate(WIRE, 100, owner="thread")
            seen.extend((buf.nbytes, buf.level, arena.plain_bytes_of("thread")))
            facade.free(buf)

        await asyncio.get_running_loop().run_in_executor(None, worker)
        assert seen == [100, WIRE, 128] and arena.committed == 0
        with pytest.raises(RuntimeError, match="own event loop"):
            facade.allocate(WIRE, 64, owner="loop")

    asyncio.run(main())


def test_a_buffer_in_several_runs_is_written_across_them_and_read_back_whole() -> None:
    async def main() -> None:
        arena = Arena(1 * KIB)
        small = [await arena.allocate(WIRE, 64, owner="s") for _ in range(16)]
        for buf in small[::2]:
            buf.free()  # eight 64-byte holes, no two adjacent
        buf = await arena.allocate(WIRE, 200, owner="b")
        assert len(buf.segments) == 4 and sum(len(s) for s in buf.segments) == 200
        buf.write(b"\0" * 200)
        buf.write(b"abcdefghij" * 10, offset=60)  # starts in the first run, ends in the third
        assert buf.tobytes() == bytes(60) + b"abcdefghij" * 10 + bytes(40)
        buf.write(b"xy", offset=198)  # the very end
        assert buf.tobytes()[150:] == b"abcdefghij" + bytes(38) + b"xy"
        for offset, size in ((-1, 1), (199, 2), (0, 201)):
            with pytest.raises(ValueError):
                buf.write(bytes(size), offset=offset)

    asyncio.run(main())


def level_books(arena: Arena, level: str) -> tuple[object, ...]:
    levels = arena.gauges(now=10.0)["levels"]
    assert isinstance(levels, dict)
    g = levels[level]
    return (g["reserved"], g["in_use"], g["reserved_unused"], g["allocated"], g["high_water"])


def test_the_books_follow_every_draw_return_and_release_to_zero() -> None:
    async def main() -> None:
        arena = Arena(16 * KIB)
        res = await arena.reserve({PAGE: 8 * KIB, WIRE: 128}, owner="w")
        page = res.take(PAGE, 4 * KIB)
        wire = res.take(WIRE, 64)
        plain = await arena.allocate(PAGE, 1 * KIB, owner="p")
        assert level_books(arena, "PAGE") == (8 * KIB, 5 * KIB, 4 * KIB, 1 * KIB, 5 * KIB)
        assert level_books(arena, "WIRE") == (128, 64, 64, 0, 64)
        progress = arena.progress
        page.put_back()  # back into the reservation: drawable again
        assert level_books(arena, "PAGE") == (8 * KIB, 1 * KIB, 8 * KIB, 1 * KIB, 5 * KIB)
        assert res.held_total == 64 and arena.progress > progress
        res.release()  # what is left goes; the drawn WIRE buffer keeps the reservation
        assert arena.committed == 64 + 1 * KIB
        assert arena.holdings() == {"w": row(WIRE=64), "p": row(PAGE=1 * KIB)}
        wire.put_back()  # the last of a released reservation: it is gone from the books
        plain.free()
        assert arena.committed == 0 and arena.holdings() == {}
        assert level_books(arena, "PAGE") == (0, 0, 0, 0, 5 * KIB)
        g = arena.gauges(now=10.0)
        assert (g["free"], g["high_water"], g["waiters"]) == (16 * KIB, 8 * KIB + 128 + KIB, 0)

    asyncio.run(main())
