"""A target connection's own decisions, sans-I/O: bad PDUs, failed I/O, timers, waiters."""

from __future__ import annotations

import pytest

from earmark.iscsi.errors import DigestError, ProtocolError
from earmark.iscsi.opcodes import RejectReason
from earmark.iscsi.pdu import Reject
from earmark.scsi import cdb as cdbs
from earmark.scsi.sense import SenseKey, parse_sense
from earmark.target import connection_core as core
from earmark.target.session import Policy
from tests.target.test_session import BS, Rig

HEADER = memoryview(bytes(48))


@pytest.mark.parametrize(
    ("exc", "out_of_sync", "closes", "reason"),
    [
        (ProtocolError("bad opcode", reject=RejectReason.COMMAND_NOT_SUPPORTED), False, False,
         RejectReason.COMMAND_NOT_SUPPORTED),
        (ProtocolError("bad length"), True, True, RejectReason.PROTOCOL_ERROR),
        (DigestError("data digest", header=False), False, True, RejectReason.DATA_DIGEST_ERROR),
        (DigestError("header digest", header=True), True, True, None),
    ],
)
def test_a_bad_pdu_is_rejected_if_quotable_and_closes_unless_the_stream_is_in_sync(
        exc: ProtocolError, out_of_sync: bool, closes: bool,
        reason: RejectReason | None) -> None:
    rig = Rig()
    assert core.bad_pdu_closes(rig.session, HEADER, exc, out_of_sync) is closes
    rejects = [p for p in rig.pump() if isinstance(p, Reject)]
    assert [r.reason for r in rejects] == ([] if reason is None else [int(reason)])


def test_a_bad_pdu_during_login_closes() -> None:
    assert core.bad_pdu_closes(None, HEADER, ProtocolError("x"), out_of_sync=False)


def test_a_failed_io_reports_an_internal_target_failure() -> None:
    sense = parse_sense(core.FAILED_IO_SENSE)
    assert (sense.key, sense.asc, sense.ascq) == (SenseKey.HARDWARE_ERROR, 0x44, 0x00)


def test_an_armed_timer_is_kept_while_it_fires_no_later_than_the_deadline() -> None:
    rig = Rig()  # pings after 5 s idle
    assert rig.session.timer_for(None) == 5.0
    assert rig.session.timer_for(3.0) == 3.0  # early is harmless: kept
    assert rig.session.timer_for(7.0) == 5.0  # too late: re-armed


def test_the_reader_waits_for_unsolicited_data_buffers_a_command_for_the_rest() -> None:
    rig = Rig(policy=Policy.NONE)
    rig.command(cdbs.write_10(0, 128), edtl=128 * BS, write=True, data=b"a" * 8192,
                final=False)
    blocking, burst = rig.allocs
    assert core.alloc_waiter("conn-3", blocking) == "conn-3/reader"
    assert core.alloc_waiter("conn-3", burst) == f"conn-3/{burst.task.owner}"
