"""The initiator's receive side under the policies without reservations, on real TCP.

A receive buffer is allocated when its PDU arrives, half a round trip after the
command went out, while the command holds what it took at submit; a reader
that cannot have one stops reading, and the deadlock detector must name that
stall, not a watchdog.
"""

from __future__ import annotations

import asyncio
import os

from earmark.host.policy import Policy
from earmark.memory import Arena, HostLevel, find_deadlock
from earmark.memory.allocation import Charge
from earmark.runtime.embedded import EmbeddedTarget
from earmark.runtime.initiator_device import BlockDevice

ARENA = 2 << 20  # the connection's 1 MiB receive buffer and room for a few commands


def test_the_response_buffer_is_allocated_when_the_response_arrives(
    embedded_target: EmbeddedTarget,
) -> None:
    async def main() -> None:
        arena = Arena(ARENA)
        got: list[tuple[int, int, str]] = []
        allocate_now = arena.allocate_charge_now

        def spy(level: int, nbytes: int, *, owner: str) -> Charge | None:
            got.append((level, nbytes, owner))
            return allocate_now(level, nbytes, owner=owner)

        arena.allocate_charge_now = spy  # type: ignore[method-assign]
        async with BlockDevice(embedded_target.url, arena=arena, policy=Policy.NONE) as dev:
            baseline = arena.committed
            cost = dev.command_cost(True, 8192)
            pages = [memoryview(bytearray(os.urandom(4096))) for _ in range(2)]
            got.clear()
            write = asyncio.create_task(dev.write_pages(0, pages, owner="wb"))
            await asyncio.sleep(0)  # submitted: the command is out, its answer is not in
            assert arena.holdings()["wb"][HostLevel.TASK] == cost[HostLevel.TASK]
            assert arena.holdings()["wb"][HostLevel.WIRE] == 0 and got == []
            await write
            # One receive buffer, the response with room for sense, charged to the command
            # it answered, and given back with everything else.
            assert got == [(HostLevel.WIRE, 320, "wb")]
            assert arena.committed == baseline
            assert await dev.read(0, 8192) == b"".join(pages)  # sent as pieces, intact

    asyncio.run(main())


def test_a_stalled_receive_allocation_pauses_the_reader_and_is_named(
    embedded_target: EmbeddedTarget,
) -> None:
    async def main() -> None:
        arena = Arena(ARENA)
        async with BlockDevice(embedded_target.url, arena=arena, policy="none") as dev:
            baseline = arena.committed
            task_bytes = dev.command_cost(True, 4096)[HostLevel.TASK]
            # Dirty pages that only the writeback can free, leaving room for the command
            # PDU but not for the buffer its response will need.
            pages = await arena.allocate_charge(
                HostLevel.PAGE, arena.free() - task_bytes - 64, owner="cache")
            arena.waits.set_passive("cache", freed_by=("wb",), holds="dirty pages")
            queued = asyncio.Event()

            def still_queued() -> None:
                """Shrinkers are called as someone queues, in order: this one after the
                initiator's own, so whoever is still queued waits for real."""
                if arena.waiting:
                    queued.set()

            arena.add_shrinker(still_queued)
            write = asyncio.create_task(
                dev.write_pages(0, [memoryview(bytearray(4096))], owner="wb"))
            async with asyncio.timeout(10):
                await queued.wait()
            arena.remove_shrinker(still_queued)
            stream = dev.stream
            transport = stream.transport if stream is not None else None
            assert isinstance(transport, asyncio.Transport)
            assert not transport.is_reading()  # the reader stopped
            assert [w.waiter for w in arena.memory_waits()] == [dev.receiver]
            report = find_deadlock(arena)
            assert report is not None
            assert f"{dev.receiver} holds nothing → waits for 320 B WIRE" in report.cycle
            assert "wb holds 192 B TASK → waits for the target's answer, which its " \
                   "stalled receiver cannot read" in report.cycle
            assert not write.done()
            # Writeback frees memory elsewhere (here: by hand): the reader goes on.
            pages.free()
            arena.waits.clear_passive("cache")
            await asyncio.wait_for(write, 10)
            assert transport.is_reading()
            assert find_deadlock(arena) is None and arena.committed == baseline

    asyncio.run(main())
