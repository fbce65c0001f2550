"""A device's end: its close waits for the commands in flight, and a closed device goes
with its last reference: no reference cycle keeps it, and its arena (16 MiB by default),
alive until the next full garbage collection. Sixty devices opened and closed in turn
held 300 MB more than one before this. And a command whose caller is cancelled runs on
until the target answers, its pages under writeback until then."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Iterator

import pytest

from earmark.host.pagecache import PageCache
from earmark.host.policy import HostTuning, Policy
from earmark.memory.levels import PAGE_BYTES
from earmark.runtime.embedded import EmbeddedTarget
from earmark.runtime.initiator_device import BlockDevice
from earmark.target.backing import MemoryBacking


@pytest.fixture
def no_collector() -> Iterator[None]:
    """Only reference counts free anything while the test runs."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("policy", [Policy.RESERVE, Policy.NONE])
def test_a_closed_device_and_its_arena_go_with_the_last_reference(
    embedded_target: EmbeddedTarget, no_collector: None, policy: Policy,
) -> None:
    async def main() -> None:
        dev = BlockDevice(embedded_target.url, policy=policy)
        async with dev:
            await dev.write(0, b"e" * 4096)
            assert await dev.read(0, 4096) == b"e" * 4096
        arena, device = weakref.ref(dev.arena), weakref.ref(dev)
        del dev
        assert device() is None, gc.get_referrers(device())
        assert arena() is None

    asyncio.run(main())


class GatedBacking(MemoryBacking):
    """Writes wait at a gate the test opens (a disk that answers when told)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.entered, self.gate = threading.Event(), threading.Event()

    def write_now(self, offset: int, buffers: list[memoryview]) -> bool:
        return False  # not on the target's loop: on its I/O threads, through write()

    def write(self, offset: int, buffers: list[memoryview]) -> None:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        super().write(offset, buffers)


@pytest.mark.tcp
def test_close_waits_for_the_commands_in_flight() -> None:
    backing = GatedBacking(1 << 20)
    with EmbeddedTarget(backing) as target:
        async def main() -> None:
            dev = BlockDevice(target.url)
            await dev.connect()
            write = asyncio.ensure_future(dev.write(8192, b"w" * 4096))
            await asyncio.to_thread(backing.entered.wait, 30)  # in the backing's hands
            close = asyncio.ensure_future(dev.close())
            await asyncio.sleep(0)  # the close has begun: it waits for the write
            assert not close.done()
            backing.gate.set()
            await close
            await write  # answered, not failed by the close
        asyncio.run(main())
    back = memoryview(bytearray(4096))
    backing.readinto(8192, [back])
    assert back == b"w" * 4096


@pytest.mark.tcp
@pytest.mark.parametrize("policy", [Policy.RESERVE, Policy.NONE])
def test_a_writeback_cancelled_while_the_target_holds_it_ends_with_the_answer(
        policy: Policy) -> None:
    """close cancels the flusher's writeback while the target writes it: the command,
    its CmdSN spent, runs on; its page stays under writeback, and its memory held,
    until the answer; then fsync finds nothing left, and nothing is lost or leaked.
    (Given back at the cancel, the target would still read the page's buffer; left
    under writeback, fsync would wait for good.)"""
    backing = GatedBacking(1 << 20)
    with EmbeddedTarget(backing) as target:
        async def main() -> None:
            async with BlockDevice(target.url, policy=policy) as dev:
                cache = PageCache(dev.arena, dev, policy, HostTuning(background_ratio=0.0))
                cache.start()
                try:
                    await cache.pwrite(2 * PAGE_BYTES, b"c" * PAGE_BYTES, owner="w")
                    await asyncio.to_thread(backing.entered.wait, 30)  # the target's now
                    await cache.close()
                    assert cache.pages[2].writeback and cache.inflight == 1
                    assert len(dev.unanswered()) == 1
                finally:
                    backing.gate.set()
                await cache.fsync(owner="syncer")
                assert not cache.pages[2].writeback and cache.inflight == 0
                assert not dev.unanswered()
            assert dev.arena.committed == len(cache.pages) * dev.arena.cost(PAGE_BYTES)
        asyncio.run(main())
    back = memoryview(bytearray(PAGE_BYTES))
    backing.readinto(2 * PAGE_BYTES, [back])
    assert back == b"c" * PAGE_BYTES
