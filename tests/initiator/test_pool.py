"""Command reservations under `reserve`: one per command in flight, reused, all returned.

A finished command's reservation is kept for the next command of its size, so a
caller that issues again at once does not ask the arena each time; it is never
lent to two commands, never kept once anyone has to wait for memory (an idle
reservation must not be what some waiter waits for), and closing returns
everything.
"""

from __future__ import annotations

import asyncio
from typing import cast

from earmark.memory import Arena, HostLevel, WaitKind
from earmark.memory.claim import Claim
from earmark.memory.reservation import Reservation
from earmark.runtime.embedded import EmbeddedTarget
from earmark.runtime.initiator_device import BlockDevice, _Issued
from tests.targets import EmbeddedSpec

LUN = EmbeddedSpec.lun_bytes  # the shared embedded target's


def test_every_command_in_flight_holds_a_reservation_of_its_own(
    embedded_target: EmbeddedTarget,
) -> None:
    async def main() -> None:
        arena = Arena(4 << 20)
        async with BlockDevice(embedded_target.url, arena=arena) as dev:
            submit = dev._submit
            worst = 0

            def spy(cmd: _Issued, now: float) -> None:
                nonlocal worst
                res = cmd.res
                assert res is not None and not res.released
                others = [cast("_Issued", c).res for c in dev.unanswered()]
                assert all(res is not other for other in others)
                assert res not in dev.admission.idle
                worst = max(worst, len(others) + 1)
                submit(cmd, now)
                # The detector sees the command wait for the target, though nothing
                # registered a wait: the device lists its waits when asked.
                assert any(w.waiter == dev.name and w.kind is WaitKind.EXTERNAL
                           and w.since == cmd.since for w in arena.waits.waits())

            dev._submit = spy  # type: ignore[method-assign]

            async def worker(n: int) -> None:
                buf = bytearray(4096)
                for i in range(n):
                    await dev.readinto((i * 4096) % LUN, buf)

            await asyncio.gather(*(worker(40) for _ in range(8)))
            assert worst == 8

    asyncio.run(main())


def test_reservations_are_reused_and_all_returned(embedded_target: EmbeddedTarget) -> None:
    async def main() -> None:
        arena = Arena(4 << 20)
        reserve = arena.reserve
        asked = 0

        async def counting(claims: Claim, *, owner: str) -> Reservation:
            nonlocal asked
            asked += 1
            return await reserve(claims, owner=owner)

        async with BlockDevice(embedded_target.url, arena=arena) as dev:
            arena.reserve = counting  # type: ignore[method-assign,assignment]
            buf = bytearray(4096)
            for i in range(100):
                await dev.readinto(i * 4096, buf)
            # Each read took the reservation the one before it gave back.
            assert asked <= 1
            # Kept while nobody waits, under a name of its own: no task holds it.
            await asyncio.sleep(0)
            await dev.readinto(0, buf)
            assert asked <= 1 and len(dev.admission.idle) >= 1
            assert arena.reservations_of(dev.name) == []
            idle = sum(res.total() for res in dev.admission.idle)
            # A claim that fits only with the idle bytes: they go back before it would
            # wait, and it is granted at once.
            need = arena.capacity - arena.committed + idle
            other = await asyncio.wait_for(reserve({HostLevel.TASK: need}, owner="other"), 1.0)
            assert dev.admission.idle == []
            # Room for one read, exactly: it is admitted; then someone has to wait, and
            # the read's reservation, when it finishes, goes to them, not to the pool.
            one = sum(dev.command_cost(False, 4096).values())
            other.release({HostLevel.TASK: one})
            read = asyncio.ensure_future(dev.readinto(0, buf))
            await asyncio.sleep(0)
            assert arena.committed == arena.capacity
            blocked = asyncio.ensure_future(reserve({HostLevel.TASK: one}, owner="blocked"))
            await read
            assert asked == 2 and dev.admission.idle == []
            (await asyncio.wait_for(blocked, 1.0)).release()
            other.release()
            await dev.readinto(0, buf)
            assert asked == 3 and len(dev.admission.idle) == 1
        assert arena.committed == 0 and arena.holdings() == {}

    asyncio.run(main())
