"""Unit attentions every session on a LUN hears (a LUN reset, a new capacity), once each,
on its next command but INQUIRY, REPORT LUNS and REQUEST SENSE: multipath initiators wait
for them on every path."""

from __future__ import annotations

from earmark.iscsi.opcodes import TmfFunction
from earmark.scsi.disk import Disk
from earmark.scsi.sense import ScsiError, ScsiStatus, SenseKey
from earmark.target.backing import MemoryBacking
from earmark.target.unit import LogicalUnit
from tests.target.test_reservations import TUR, Initiator

INQUIRY = bytes([0x12, 0, 0, 0, 36, 0])


def test_a_lun_reset_is_heard_once_by_every_session_on_the_lun() -> None:
    unit = LogicalUnit(0, Disk(2048, "A1"), MemoryBacking(2048 * 512))
    a, b = Initiator(unit, "iqn.a"), Initiator(unit, "iqn.b")
    a.tmf(TmfFunction.LOGICAL_UNIT_RESET)
    assert b.status(INQUIRY) == ScsiStatus.GOOD  # INQUIRY does not hear it
    for who in (a, b):
        assert who.status(TUR) == ScsiStatus.CHECK_CONDITION
        assert who.status(TUR) == ScsiStatus.GOOD
    assert unit.counters.failed == {(0x00, ScsiStatus.CHECK_CONDITION): 2}


def test_a_closed_session_leaves_nothing_behind() -> None:
    unit = LogicalUnit(0, Disk(2048, "A2"), MemoryBacking(2048 * 512))
    a, b = Initiator(unit, "iqn.a"), Initiator(unit, "iqn.b")
    b.session.close()
    unit.tell_all(ScsiError(SenseKey.UNIT_ATTENTION, 0x2A, 0x09))
    assert unit.sessions == {a.session} and set(unit.attention) == {a.session}
    assert a.status(TUR) == ScsiStatus.CHECK_CONDITION
    assert not unit.attention
