"""`earmark serve --poll`: the target's loop polls after each command it serves and each
answer it sends, and never when polling is off."""

from __future__ import annotations

import asyncio

import pytest

from earmark.busy_poll import Poll
from earmark.runtime import busy_poller
from earmark.runtime.initiator_device import BlockDevice
from earmark.runtime.server import TargetServer
from earmark.target import build
from earmark.target.backing import MemoryBacking


class CountingPoll(Poll):
    """The real rule, counting what the runtime told it."""

    events = 0
    turns = 0

    def event(self, now: float) -> bool:
        CountingPoll.events += 1
        return super().event(now)

    def turn(self, now: float) -> bool:
        CountingPoll.turns += 1
        return super().turn(now)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[CountingPoll]:
    monkeypatch.setattr(busy_poller, "Poll", CountingPoll)
    CountingPoll.events = CountingPoll.turns = 0
    return CountingPoll


async def served_reads(poll_s: float, reads: int) -> None:
    server = TargetServer(build.one_lun(MemoryBacking(1 << 20)), poll_s=poll_s)
    await server.start()
    try:
        url = f"iscsi://127.0.0.1:{server.port}/{build.EMBEDDED_IQN}/0"
        async with BlockDevice(url) as device:
            for i in range(reads):
                assert await device.read(i * 4096, 4096) == bytes(4096)
    finally:
        await server.stop(grace=1)


@pytest.mark.tcp
def test_the_target_polls_after_every_command_it_serves(counting: type[CountingPoll]) -> None:
    asyncio.run(served_reads(poll_s=0.001, reads=20))
    # at least one event a read (the command in, its answer out), and the loop turned
    assert counting.events >= 20
    assert counting.turns >= 1


@pytest.mark.tcp
def test_a_target_without_polling_never_polls(counting: type[CountingPoll]) -> None:
    asyncio.run(served_reads(poll_s=0.0, reads=5))
    assert counting.events == counting.turns == 0
