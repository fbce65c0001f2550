"""Session reinstatement on the earmark target: an old session's tasks end before the new
session begins, so a write still on its way to the disk cannot land after newer writes;
and a connection lost with I/O running gives every buffer back once the I/O returns."""

from __future__ import annotations

import asyncio
import threading

import pytest

from earmark.initiator.errors import LoginError
from earmark.initiator.session import Timeouts
from earmark.runtime.embedded import EmbeddedTarget
from earmark.runtime.initiator_device import BlockDevice
from earmark.sim.stacks import SlowBacking
from earmark.target.backing import Backing, MemoryBacking
from tests.arena_settled import arena_settled_from_thread

pytestmark = pytest.mark.tcp


class FirstWriteSlow(SlowBacking):
    """A backing whose first write takes `delay` seconds (a disk that hangs once)."""

    def __init__(self, inner: Backing, delay: float) -> None:
        super().__init__(inner, delay)
        self._first = True
        self._lock = threading.Lock()
        #: Set when the slow write is in the backing's hands, and once it has returned.
        self.started = threading.Event()
        self.returned = threading.Event()

    def write(self, offset: int, buffers: list[memoryview]) -> None:
        with self._lock:
            slow, self._first = self._first, False
        if slow:
            self.started.set()
            super().write(offset, buffers)
            self.returned.set()
        else:
            self.inner.write(offset, buffers)


def a_then_b(target: EmbeddedTarget, backing: FirstWriteSlow,
             abort: float) -> tuple[bytes, BlockDevice]:
    """Write A (it hangs in the backing past the 0.3 s command timeout), then B to the
    same block; read the block back once the first A's I/O has returned."""

    async def main() -> tuple[bytes, BlockDevice]:
        dev = BlockDevice(target.url, reconnect_timeout=10,
                          timeouts=Timeouts(command=0.3, nop_interval=5, nop_timeout=5,
                                            abort=abort))
        async with dev:
            await dev.write(0, b"A" * 4096)
            await dev.write(0, b"B" * 4096)
            assert await asyncio.to_thread(backing.returned.wait, 10)
            return await dev.read(0, 4096), dev

    return asyncio.run(main())


def test_a_timed_out_write_cannot_land_after_newer_writes() -> None:
    """The abort goes unanswered in time (the target answers only once the write is
    back), so the device logs in again (same ISID) and sends A again, then B. Without
    the fence the first A reached the disk after B: an acknowledged write lost."""
    backing = FirstWriteSlow(MemoryBacking(1 << 20), delay=1.0)
    with EmbeddedTarget(backing) as target:
        back, dev = a_then_b(target, backing, abort=0.2)
        assert dev.reconnects >= 1 and dev.reissued >= 1  # the reinstatement path
        assert back == b"B" * 4096
        arena_settled_from_thread(target, 0)  # a lost connection's buffers given back


def test_an_aborted_write_is_over_before_its_abort_is_answered() -> None:
    """With time for the abort: ABORT TASK is answered only once the write is back from
    the backing, then the device sends it again on the same session; B, written after,
    is what the block holds."""
    backing = FirstWriteSlow(MemoryBacking(1 << 20), delay=1.0)
    with EmbeddedTarget(backing) as target:
        back, dev = a_then_b(target, backing, abort=5)
        assert dev.aborts >= 1 and dev.reissued >= 1 and dev.reconnects == 0
        assert back == b"B" * 4096


def test_the_latest_login_of_a_nexus_reinstates_one_still_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two initiators with one ISID: B's login reinstates A's session and waits for A's
    hanging write; A logs in again, which reinstates B's waiting login in turn (B is
    refused) and completes once the write is back, then sends it again. One session per
    nexus, and the fence holds along the chain."""
    from earmark.initiator import device
    from earmark.runtime.initiator_sync import SyncBlockDevice

    monkeypatch.setattr(device, "new_isid", lambda: 0x80_1234_5678)
    backing = FirstWriteSlow(MemoryBacking(1 << 20), delay=1.5)
    with EmbeddedTarget(backing) as target:
        a = SyncBlockDevice(target.url, reconnect_timeout=20)
        errors: list[BaseException] = []

        def write() -> None:
            try:
                a.write(0, b"A" * 4096)
            except BaseException as exc:  # reported below
                errors.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        assert backing.started.wait(10)  # A's write is in the backing's hands
        with pytest.raises(LoginError, match="closed the connection during login"):
            SyncBlockDevice(target.url, login_timeout=10)
        writer.join(20)
        assert not writer.is_alive() and errors == []
        assert a.reconnects >= 1 and a.read(0, 4096) == b"A" * 4096
        a.close()
