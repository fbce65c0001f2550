"""Which acknowledged writes a flush vouches for once the target said it powered on."""

from __future__ import annotations

import asyncio
import threading

import pytest

from earmark.initiator.durability import Durability
from earmark.initiator.errors import CacheLostError
from earmark.initiator.recovery import Recovery
from earmark.initiator.session import Command
from earmark.runtime.embedded import EmbeddedTarget
from earmark.runtime.initiator_device import BlockDevice
from earmark.runtime.initiator_sync import SyncBlockDevice
from earmark.scsi.sense import ScsiError, SenseKey
from earmark.target.backing import MemoryBacking

POWER_ON = ScsiError(SenseKey.UNIT_ATTENTION, 0x29, 0x01)


def test_a_flush_spanning_a_power_on_fails_once_and_the_next_flush_vouches_again() -> None:
    d = Durability()
    d.acked += 2
    covers = d.acked  # the flush goes out; the target restarts before it is answered
    d.attention(POWER_ON)
    with pytest.raises(CacheLostError):
        d.flushed(covers)
    d.acked += 1
    d.flushed(d.acked)  # reported once, as errseq does


def test_a_power_on_with_every_acknowledged_write_flushed_loses_nothing() -> None:
    d = Durability()
    d.attention(POWER_ON)  # the first login's
    d.acked += 3
    d.flushed(d.acked)
    d.attention(POWER_ON)
    d.flushed(d.acked)


def test_a_write_acknowledged_while_a_flush_ran_is_not_covered_by_it() -> None:
    d = Durability()
    d.acked += 1
    covers = d.acked
    d.acked += 1  # acknowledged after the flush went out
    d.flushed(covers)
    d.attention(POWER_ON)
    with pytest.raises(CacheLostError):
        d.flushed(d.acked)


@pytest.mark.parametrize(("ascq", "lost"), [(0x00, True), (0x01, True), (0x04, True),
                                            (0x03, False), (0x07, False)])
def test_only_attentions_that_say_the_device_powered_on_or_reset_itself_count(
    ascq: int, lost: bool,
) -> None:
    d = Durability()
    d.acked += 1
    d.attention(ScsiError(SenseKey.UNIT_ATTENTION, 0x29, ascq))
    assert d.lost is lost


def test_recovery_hears_the_attention_it_sends_again() -> None:
    recovery = Recovery("test", max_attempts=2, reconnect_timeout=1.0)
    recovery.durability.acked += 1
    cmd = Command(b"\x35" + bytes(9), 0)
    cmd.error = POWER_ON
    assert recovery.send_again(cmd) and cmd.error is None
    assert recovery.durability.lost



def test_the_asyncio_engines_flush_fails_when_the_target_powered_on_while_it_ran() -> None:
    device = BlockDevice("iscsi://127.0.0.1:1/iqn.2024-01.org.earmark:t/0")

    async def execute(cdb: bytes, **_: object) -> None:
        device.durability.attention(POWER_ON)  # the flush meets the new target's attention

    device.execute = execute  # type: ignore[method-assign,assignment]
    device.durability.acked += 1
    with pytest.raises(CacheLostError):
        asyncio.run(device.flush())
    asyncio.run(device.flush())


@pytest.mark.tcp
def test_the_blocking_engines_flush_fails_after_a_power_on_with_writes_unflushed() -> None:
    with EmbeddedTarget(MemoryBacking(1 << 20), power_on=True) as target, \
            SyncBlockDevice(target.url) as device:  # its first command heard a power on
        device.write(0, bytes(4096))
        (unit,) = target.server.portal.targets[target.iqn].units.values()
        done = threading.Event()

        def power_on() -> None:
            unit.tell_all(ScsiError(SenseKey.UNIT_ATTENTION, 0x29, 0x00))
            done.set()

        target.loop.call_soon_threadsafe(power_on)
        assert done.wait(10)
        with pytest.raises(CacheLostError):
            device.flush()
        device.flush()
