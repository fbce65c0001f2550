"""Which acknowledged writes a flush vouches for once the target said it powered on."""

from __future__ import annotations

import pytest

from earmark.initiator.durability import Durability
from earmark.initiator.errors import CacheLostError
from earmark.initiator.recovery import Recovery
from earmark.initiator.session import Command
from earmark.scsi.sense import ScsiError, SenseKey

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
