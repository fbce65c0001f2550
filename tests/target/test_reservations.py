"""Reservations live on the logical unit and follow the I_T nexus through the session:
another session is fenced off, and a lost nexus or a reset ends a RESERVE(6)."""

from __future__ import annotations

import pytest

from earmark.iscsi.negotiation import SessionParams
from earmark.iscsi.opcodes import TmfFunction
from earmark.iscsi.pdu import ScsiCommand, ScsiResponse, TaskMgmtRequest, TaskMgmtResponse
from earmark.scsi.disk import Disk
from earmark.scsi.reservations import Nexus
from earmark.scsi.sense import ScsiStatus
from earmark.target.backing import MemoryBacking
from earmark.target.session import AdmissionPolicy, SessionConfig, TargetSession
from earmark.target.unit import LogicalUnit
from tests.wire_reader import WireReader

RESERVE = b"\x16" + bytes(5)
TUR = bytes(6)


class Initiator:
    """One session on `unit`, as initiator `name`; commands with no data only."""

    def __init__(self, unit: LogicalUnit, name: str) -> None:
        self.session = TargetSession(
            SessionParams(), {0: unit}, exp_cmd_sn=1, stat_sn=1, slots=[],
            config=SessionConfig(policy=AdmissionPolicy.NONE, window=4, nop_interval=None),
            nexus=Nexus(name, 0x400001),
        )
        self.reader = WireReader(1 << 20)
        self.sn = 1

    def status(self, cdb: bytes) -> int:
        self.session.receive(ScsiCommand(itt=self.sn, cmd_sn=self.sn, cdb=cdb.ljust(16, b"\0")),
                             0.0)
        self.sn += 1
        (resp,) = self.reader.feed(b"".join(self.session.data_to_send()))
        assert isinstance(resp, ScsiResponse)
        return resp.status

    def tmf(self, function: TmfFunction) -> None:
        self.session.receive(TaskMgmtRequest(function=function, itt=self.sn, cmd_sn=self.sn,
                                             immediate=True), 0.0)
        (resp,) = self.reader.feed(b"".join(self.session.data_to_send()))
        assert isinstance(resp, TaskMgmtResponse) and resp.response == 0


@pytest.fixture
def unit() -> LogicalUnit:
    return LogicalUnit(0, Disk(2048, "R1"), MemoryBacking(2048 * 512))


def test_another_session_is_fenced_until_the_holder_connection_closes(unit: LogicalUnit) -> None:
    a, b = Initiator(unit, "iqn.a"), Initiator(unit, "iqn.b")
    assert a.status(RESERVE) == ScsiStatus.GOOD
    assert b.status(RESERVE) == ScsiStatus.RESERVATION_CONFLICT
    assert b.status(TUR) == ScsiStatus.RESERVATION_CONFLICT
    assert a.status(TUR) == ScsiStatus.GOOD
    a.session.close()  # the I_T nexus is lost
    assert b.status(RESERVE) == ScsiStatus.GOOD


@pytest.mark.parametrize("function", [TmfFunction.LOGICAL_UNIT_RESET,
                                      TmfFunction.TARGET_WARM_RESET])
def test_resets_end_reserve6(unit: LogicalUnit, function: TmfFunction) -> None:
    a, b = Initiator(unit, "iqn.a"), Initiator(unit, "iqn.b")
    assert a.status(RESERVE) == ScsiStatus.GOOD
    a.tmf(function)
    if function == TmfFunction.LOGICAL_UNIT_RESET:  # every session on the LUN hears of it
        assert b.status(TUR) == ScsiStatus.CHECK_CONDITION
    assert b.status(RESERVE) == ScsiStatus.GOOD
