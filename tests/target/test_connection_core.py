"""A target connection's own decisions, sans-I/O: bad PDUs, failed I/O, timers, waiters."""

from __future__ import annotations

import asyncio

import pytest

from earmark.iscsi.errors import DigestError, ProtocolError
from earmark.iscsi.opcodes import RejectReason
from earmark.iscsi.pdu import R2T, RESERVED_TAG, DataOut, Reject
from earmark.memory import Arena, Buffer
from earmark.memory.levels import TargetLevel
from earmark.scsi import cdb as cdbs
from earmark.scsi.sense import SenseKey, parse_sense
from earmark.target import connection_core as core
from earmark.target.events import AllocRequest
from earmark.target.portal import TargetPortal
from earmark.target.session import AdmissionPolicy, SessionConfig
from tests.target.test_session import BS, KIB, Rig

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
    rig = Rig(policy=AdmissionPolicy.NONE)
    rig.command(cdbs.write_10(0, 128), edtl=128 * BS, write=True, data=b"a" * 8192,
                final=False)
    blocking, burst = rig.allocs
    assert core.alloc_waiter("conn-3", blocking) == "conn-3/reader"
    assert core.alloc_waiter("conn-3", burst) == f"conn-3/{burst.task.owner}"


def test_the_reader_frees_the_commands_buffers_only_while_a_command_awaits_its_data() -> None:
    """`--policy none`: a reader with nothing left to deliver is no way out of a deadlock."""
    rig = Rig(policy=AdmissionPolicy.NONE)  # FirstBurstLength 16 KiB, MaxBurstLength 32 KiB
    payload = bytes(range(256)) * (48 * KIB // 256)
    rig.command(cdbs.write_10(0, len(payload) // BS), edtl=len(payload), write=True,
                data=payload[: 8 * KIB], final=False)
    # The unsolicited data is still to come (the reader waits for its buffer).
    assert core.commands_freers("c", rig.session) == ("c/reader",)

    async def grant(req: AllocRequest) -> Buffer:
        return await rig.arena.allocate(TargetLevel.BUFFER, req.nbytes, owner="c/cmds")

    for req in list(rig.allocs):
        rig.session.allocated(req, asyncio.run(grant(req)))
    (r2t,) = [p for p in rig.pump() if isinstance(p, R2T)]
    rig.send(DataOut(itt=1, ttt=RESERVED_TAG, data_sn=0, buffer_offset=8 * KIB, final=True,
                     data=payload[8 * KIB : 16 * KIB]))
    assert core.commands_freers("c", rig.session) == ("c/reader",)  # the R2T's data
    for i, pos in enumerate(range(16 * KIB, 48 * KIB, 8 * KIB)):
        rig.send(DataOut(itt=1, ttt=r2t.ttt, data_sn=i, buffer_offset=pos,
                         final=pos + 8 * KIB == 48 * KIB, data=payload[pos : pos + 8 * KIB]),
                 run=False)
    # All its data is in: the command moves by itself (its write runs).
    assert core.commands_freers("c", rig.session) == ("c/itt-00000001",)
    (io,) = rig.pending
    rig.session.io_done(io, b"")
    assert core.commands_freers("c", rig.session) == ()
    assert core.commands_freers("c", None) == ()


@pytest.mark.parametrize("policy", [AdmissionPolicy.RESERVE, AdmissionPolicy.NONE])
def test_a_connection_holds_its_claim_for_its_life_and_gives_all_of_it_back(
        policy: AdmissionPolicy) -> None:
    arena = Arena(4 << 20, levels=TargetLevel)
    portal = TargetPortal([], arena=arena, config=SessionConfig(policy=policy),
                          recv_bytes=64 * KIB)
    memory = core.ConnectionMemory(portal, "conn-1")
    res = asyncio.run(arena.reserve(portal.connection_claim, owner="conn-1/admit"))
    recv = memory.claimed(res)
    assert recv is not None and len(recv.segments) == 1 and recv.nbytes == 64 * KIB
    assert set(arena.waits.passive()) == {"conn-1", "conn-1/cmds"}
    slots = memory.session_slots()
    assert len(slots) == (1 if policy is AdmissionPolicy.RESERVE else 0)
    assert memory.session_slots() == []  # the first slot goes to one session only
    memory.release(slots)
    assert arena.committed == 0 and arena.waits.passive() == {}


def test_reading_stops_while_writes_are_paused_or_unsolicited_data_waits_for_a_buffer() -> None:
    assert core.may_read(None, write_paused=False)  # logging in
    assert not core.may_read(None, write_paused=True)
    rig = Rig(policy=AdmissionPolicy.NONE)
    assert core.may_read(rig.session, write_paused=False)
    rig.command(cdbs.write_10(0, 128), edtl=128 * BS, write=True, data=b"a" * 8192,
                final=False)
    assert rig.session.blocked is not None
    assert not core.may_read(rig.session, write_paused=False)
