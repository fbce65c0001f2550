"""What the target promises about a write once it said GOOD, tested where a crash or a
reordering would break it.

The SIGKILL test crashes a real `earmark serve` in the middle of a write workload and
restarts it on the same file: everything acknowledged before the last completed
SYNCHRONIZE CACHE must read back, and every block must hold something that was
written to it (or what it held first), never garbage. SIGKILL loses only what the
process had not yet handed to the kernel: this catches a target that acknowledges a
write it does not write, or writes only after the SYNCHRONIZE CACHE meant to cover it
completed, or whose buffer is reused before it is written. A write that trails its
acknowledgement by less than a SYNCHRONIZE CACHE's round trip reaches the kernel before
the kill, and SIGKILL cannot tell the page cache from the disk, so the order tests below
watch the order itself: a FUA (or WCE=0) write's sync must have returned before its
status leaves, and a plain write's `write` before its. They see it by holding that call
inside the backing and asking the target something else meanwhile: its answer comes,
the status must not.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

import earmark
from earmark.blockdev import BlockDevice
from earmark.initiator.errors import InitiatorError
from earmark.runtime.embedded import EmbeddedTarget
from earmark.scsi import cdb as C
from earmark.scsi.mode import CACHING
from earmark.target.backing import Backing, MemoryBacking
from tools.serve import EarmarkServe

BLOCK = 512
LUN_BLOCKS = 4096  # 2 MiB
WORKERS = 16
MAX_WRITE_BLOCKS = 8
SYNC_EVERY = 150  # acknowledged writes between SYNCHRONIZE CACHEs
#: The target is killed the moment this SYNCHRONIZE CACHE completes: what it covers is
#: then as fresh as it gets, so an acknowledged write still queued in the target is lost.
KILL_AT_SYNC = 8
_HEAD = struct.Struct("<8sQQ")
_MAGIC = b"EARMARK!"


def pattern(lba: int, gen: int) -> bytes:
    """Block `lba` as generation `gen` writes it (0: the LUN's first content): one
    header repeated, so a torn or misplaced block cannot pass for a written one."""
    return _HEAD.pack(_MAGIC, lba, gen).ljust(32, b"\xa5") * (BLOCK // 32)


def generation(lba: int, data: bytes) -> int | None:
    """The generation a block holds, or None for anything no write produced there."""
    magic, at, gen = _HEAD.unpack_from(data)
    return gen if magic == _MAGIC and at == lba and data == pattern(lba, gen) else None


@dataclass
class Workload:
    """Writes to random extents, never two in flight on one block, so every block's
    writes are ordered and a later generation is a later write."""

    serve: EarmarkServe
    rng: random.Random = field(default_factory=lambda: random.Random(11))
    gen: int = 0
    acked: int = 0
    syncs: int = 0
    written: list[set[int]] = field(default_factory=lambda: [{0} for _ in range(LUN_BLOCKS)])
    last_acked: list[int] = field(default_factory=lambda: [0] * LUN_BLOCKS)
    #: `last_acked` as it was when the last completed SYNCHRONIZE CACHE was sent.
    durable: list[int] = field(default_factory=lambda: [0] * LUN_BLOCKS)
    busy: set[int] = field(default_factory=set)
    killed: bool = False
    in_flight_at_kill: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def extent(self) -> range:
        while True:
            n = self.rng.randint(1, MAX_WRITE_BLOCKS)
            lba = self.rng.randrange(LUN_BLOCKS - n + 1)
            blocks = range(lba, lba + n)
            if self.busy.isdisjoint(blocks):
                return blocks

    def kill(self) -> None:
        self.killed = True
        self.in_flight_at_kill = len(self.busy)
        self.serve.kill()

    async def writer(self, dev: BlockDevice) -> None:
        while not self.killed:
            blocks = self.extent()
            self.gen += 1
            gen = self.gen
            self.busy.update(blocks)
            for lba in blocks:
                self.written[lba].add(gen)
            try:
                await dev.write(blocks[0] * BLOCK, b"".join(pattern(b, gen) for b in blocks))
            except InitiatorError:
                assert self.killed, "a write failed before the target was killed"
                return
            finally:
                self.busy.difference_update(blocks)
            for lba in blocks:
                self.last_acked[lba] = gen
            self.acked += 1
            self.progress.set()

    async def syncer(self, dev: BlockDevice) -> None:
        while not self.killed:
            while self.acked < (self.syncs + 1) * SYNC_EVERY:
                self.progress.clear()
                await self.progress.wait()
                if self.killed:
                    return
            covered = list(self.last_acked)  # acknowledged before the SYNCHRONIZE is sent
            try:
                await dev.flush()
            except InitiatorError:
                assert self.killed, "SYNCHRONIZE CACHE failed before the target was killed"
                return
            self.durable = covered
            self.syncs += 1
            if self.syncs == KILL_AT_SYNC:
                self.kill()

    async def run(self) -> None:
        # No reconnection: the target stays dead until the device is closed.
        async with earmark.open(self.serve.url, reconnect_timeout=0.2) as dev:
            async with asyncio.timeout(60):
                await asyncio.gather(self.syncer(dev), *(self.writer(dev)
                                                         for _ in range(WORKERS)))


@pytest.mark.tcp  # earmark serve listens on loopback
def test_sigkill_loses_nothing_acknowledged_before_the_last_completed_sync(
        tmp_path: Path) -> None:
    lun = tmp_path / "lun.img"
    lun.write_bytes(b"".join(pattern(lba, 0) for lba in range(LUN_BLOCKS)))
    with EarmarkServe(lun) as serve:
        work = Workload(serve)
        asyncio.run(work.run())
    assert work.killed and work.in_flight_at_kill > 0
    assert any(work.durable), "no write was covered by a completed SYNCHRONIZE CACHE"

    with EarmarkServe(lun) as again, earmark.open_sync(again.url) as dev:
        data = dev.read(0, LUN_BLOCKS * BLOCK)
    garbage, lost = [], []
    for lba in range(LUN_BLOCKS):
        gen = generation(lba, data[lba * BLOCK:(lba + 1) * BLOCK])
        if gen is None or gen not in work.written[lba]:
            garbage.append(lba)
        elif gen < work.durable[lba]:
            lost.append((lba, gen, work.durable[lba]))
    assert not garbage, f"{len(garbage)} blocks hold what no write put there: {garbage[:8]}"
    assert not lost, (f"{len(lost)} blocks lost a write acknowledged before the last "
                      f"completed SYNCHRONIZE CACHE (block, read, acknowledged): {lost[:8]}")


# ---------------------------------------------------------------- order: FUA, WCE=0

Call = tuple[str, int]
"""("write", offset) when a write returns, ("sync", 0) when a sync starts, ("synced", 0)
when it returns, ("status", 0) when the initiator has the command's status."""
PROBES = 3
"""TEST UNIT READYs answered while the backing is held: each gives a target that sends
the status anyway one more turn of its loop to do it."""


class Hold:
    """The next call of one backing method stops inside until released; the test's loop
    hears when it got there. Bounded, so a failing test cannot wedge the target."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.entered: asyncio.Future[None] = loop.create_future()
        #: Called on an event loop's thread, where holding would stall the whole target.
        self.on_a_loop = False
        self._loop = loop
        self._released = threading.Event()

    def arrive(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.on_a_loop = asyncio.get_running_loop() is not None
        self._loop.call_soon_threadsafe(self.entered.set_result, None)
        if not self.on_a_loop:
            self._released.wait(30)

    def release(self) -> None:
        self._released.set()


class RecordingBacking:
    """A memory LUN that records its writes and syncs in the order the target made them,
    and can hold one of them. The target calls them on its I/O threads, where a hold
    stalls one command, not the target. It spells out the Backing protocol rather than
    inheriting it, so a write method the protocol gains cannot bypass the record: mypy
    asks for it here."""

    def __init__(self, size: int) -> None:
        self._inner = MemoryBacking(size)
        self.calls: list[Call] = []
        self._holds: dict[str, Hold] = {}

    @contextlib.contextmanager
    def holding(self, method: Literal["write", "sync"]) -> Iterator[Hold]:
        """The next call of `method` while in the block is held until the block ends."""
        hold = self._holds[method] = Hold(asyncio.get_running_loop())
        try:
            yield hold
        finally:
            self._holds.pop(method, None)
            hold.release()

    def _arrive(self, method: str) -> None:
        hold = self._holds.pop(method, None)
        if hold is not None:
            hold.arrive()

    @property
    def size(self) -> int:
        return self._inner.size

    def readinto(self, offset: int, buffers: list[memoryview]) -> None:
        self._inner.readinto(offset, buffers)

    def read_cached(self, offset: int, buffers: list[memoryview]) -> bool:
        return self._inner.read_cached(offset, buffers)

    def write(self, offset: int, buffers: list[memoryview]) -> None:
        self._inner.write(offset, buffers)
        self._arrive("write")  # written, not yet returned: the status must still wait
        self.calls.append(("write", offset))

    def write_now(self, offset: int, buffers: list[memoryview]) -> bool:
        """Declined: a write on the event loop could not be held, and these tests hold
        one. (The loop's own writes return before their status by construction; the
        SIGKILL test above covers them, through `earmark serve` on a file.)"""
        return False

    def sync(self) -> None:
        self.calls.append(("sync", 0))
        self._arrive("sync")
        self._inner.sync()
        self.calls.append(("synced", 0))

    def punch(self, offset: int, length: int) -> None:
        self._inner.punch(offset, length)

    def extent(self, offset: int) -> tuple[bool, int]:
        return self._inner.extent(offset)

    def close(self) -> None:
        self._inner.close()


async def status_waits_for(dev: BlockDevice, backing: RecordingBacking,
                           method: Literal["write", "sync"], cdb: bytes, data: bytes) -> None:
    """Send `cdb` and hold the backing's `method` when the target calls it; meanwhile the
    target answers TEST UNIT READY on the same connection, and the command's status,
    sent after the hold ends if the order is right, must not have come before that."""
    with backing.holding(method) as hold:
        command = asyncio.ensure_future(dev.execute(cdb, write_data=memoryview(data)))
        command.add_done_callback(lambda _: backing.calls.append(("status", 0)))
        first: set[asyncio.Future[Any]] = {hold.entered, command}
        await asyncio.wait(first, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert hold.entered.done(), (
            f"status {'came' if command.done() else 'did not come'} without a call of "
            f"backing.{method}: calls {backing.calls}")
        assert not hold.on_a_loop, (
            f"backing.{method} ran on the target's event loop: this test holds it to see "
            "the order, which it can only do on an I/O thread")
        for _ in range(PROBES):
            await dev.execute(C.test_unit_ready())
        assert not command.done(), f"status sent while backing.{method} had not returned"
    await command


@pytest.fixture
def recording(embedded_targets: Callable[..., EmbeddedTarget],
              request: pytest.FixtureRequest) -> tuple[EmbeddedTarget, RecordingBacking]:
    backing = RecordingBacking(1 << 20)
    whole: Backing = backing  # for mypy: every method the target may call is recorded here
    write_cache: bool = getattr(request, "param", True)
    return embedded_targets(whole, write_cache=write_cache), backing


def wce(url: str) -> bool:
    """WCE of the Caching mode page, as the target reports it."""
    async def ask() -> bool:
        async with earmark.open(url) as dev:
            data = memoryview(bytearray(64))
            await dev.execute(C.mode_sense_10(CACHING, dbd=True), read_into=data)
            page = data[8:]  # the 8-byte MODE SENSE(10) header, no block descriptor
            assert page[0] & 0x3F == CACHING
            return bool(page[2] & 0x04)

    return asyncio.run(ask())


FUA_WRITES = [pytest.param(C.write_10(64, 8, fua=True), id="WRITE10-FUA"),
              pytest.param(C.write_16(64, 8, fua=True), id="WRITE16-FUA")]
PLAIN_WRITES = [pytest.param(C.write_10(64, 8), id="WRITE10"),
                pytest.param(C.write_16(64, 8), id="WRITE16")]
DATA = bytes(range(256)) * 16  # 8 blocks


def run_ordered(target: EmbeddedTarget, backing: RecordingBacking,
                method: Literal["write", "sync"], cdb: bytes) -> list[Call]:
    """The backing calls the command made, its status held back by `method`."""
    async def main() -> list[Call]:
        async with earmark.open(target.url) as dev:
            before = len(backing.calls)
            await status_waits_for(dev, backing, method, cdb, DATA)
            return backing.calls[before:]

    return asyncio.run(main())


@pytest.mark.parametrize("cdb", FUA_WRITES)
def test_a_fua_write_is_synced_before_its_status_is_sent(
        recording: tuple[EmbeddedTarget, RecordingBacking], cdb: bytes) -> None:
    target, backing = recording
    assert run_ordered(target, backing, "sync", cdb) == [
        ("write", 64 * BLOCK), ("sync", 0), ("synced", 0), ("status", 0)]


@pytest.mark.parametrize("recording", [False], indirect=True, ids=["WCE=0"])
@pytest.mark.parametrize("cdb", PLAIN_WRITES)
def test_without_the_write_cache_every_write_is_synced_before_its_status_is_sent(
        recording: tuple[EmbeddedTarget, RecordingBacking], cdb: bytes) -> None:
    target, backing = recording
    assert not wce(target.url)
    assert run_ordered(target, backing, "sync", cdb) == [
        ("write", 64 * BLOCK), ("sync", 0), ("synced", 0), ("status", 0)]


@pytest.mark.parametrize("cdb", PLAIN_WRITES)
def test_with_the_write_cache_a_write_is_written_before_its_status_and_not_synced(
        recording: tuple[EmbeddedTarget, RecordingBacking], cdb: bytes) -> None:
    target, backing = recording
    assert wce(target.url)
    assert run_ordered(target, backing, "write", cdb) == [("write", 64 * BLOCK), ("status", 0)]
