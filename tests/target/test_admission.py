"""The target's admission by reservation, sans-I/O: every place in the command window
(ExpCmdSN..MaxCmdSN) is a slot the session holds, slots come and go only as the rules
say, and a command the window has no slot for is never run.

Written against the mutants benchmarks/mutation.py found alive: each test pins one of
the rules they broke without any other test noticing.
"""

from __future__ import annotations

import asyncio

from earmark.iscsi.opcodes import RejectReason
from earmark.iscsi.pdu import (
    RESERVED_TAG,
    DataIn,
    NopIn,
    NopOut,
    Reject,
    ScsiCommand,
    ScsiResponse,
    encode_header,
    parse_sense_segment,
)
from earmark.memory import Arena
from earmark.memory.levels import TargetLevel
from earmark.scsi import cdb as cdbs
from earmark.scsi.sense import SenseKey, parse_sense
from earmark.target import connection_core as core
from earmark.target.executor import run_io
from earmark.target.portal import TargetPortal
from earmark.target.session import AdmissionPolicy, SessionConfig
from tests.target.test_session import BS, BUF, KIB, Rig

PER_SLOT = 256 + BUF


def window(rig: Rig) -> int:
    """Places in the window the initiator may use now."""
    return rig.session.max_cmd_sn - rig.session.exp_cmd_sn + 1


def tur(rig: Rig) -> ScsiResponse:
    (resp,) = rig.command(cdbs.test_unit_ready(), edtl=0)
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    return resp


def test_above_its_share_a_session_gives_finished_slots_back_but_keeps_one() -> None:
    rig = Rig(slots=3)
    assert window(rig) == 3 and rig.arena.committed == 3 * PER_SLOT
    rig.session.slot_target = 1
    assert rig.session.slot_demand() == 0
    resp = tur(rig)
    # The slot went back to the arena, and the window did not grow back over it.
    assert rig.arena.committed == 2 * PER_SLOT
    assert (resp.exp_cmd_sn, resp.max_cmd_sn) == (2, 3)
    tur(rig)
    assert rig.arena.committed == PER_SLOT and window(rig) == 1
    rig.session.slot_target = 0  # a session never goes below its one slot
    for _ in range(2):
        tur(rig)
        assert rig.arena.committed == PER_SLOT and window(rig) == 1
    rig.session.slot_target = 3
    assert rig.session.slot_demand() == 2


def test_without_reserve_the_session_never_asks_for_slots() -> None:
    rig = Rig(policy=AdmissionPolicy.NONE)
    rig.session.slot_target = 10
    assert rig.session.slot_demand() == 0
    assert window(rig) == 4 and rig.arena.committed == 0


def test_a_granted_slot_opens_the_window_by_one_and_carries_its_own_buffer() -> None:
    rig = Rig(slots=1)
    for lba in range(2):
        rig.backing.write(lba * 8 * BS, [memoryview(bytes([lba + 1]) * 8 * BS)])
    rig.session.slot_target = 2
    assert rig.session.slot_demand() == 1
    rig.session.add_slot(rig.reserve())
    assert rig.session.slot_demand() == 0 and window(rig) == 2
    # Both reads in flight at once: each needs a slot, and a buffer of its own.
    for lba in range(2):
        rig.command(cdbs.read_10(lba * 8, 8), edtl=8 * BS, read=True, run=False)
    assert window(rig) == 0 and len(rig.pending) == 2
    got = []
    for io in rig.pending:
        rig.session.io_done(io, run_io(io))
        got += [p for p in rig.pump() if isinstance(p, DataIn)]
    assert sorted(bytes(p.data) for p in got) == [b"\x01" * 8 * BS, b"\x02" * 8 * BS]
    assert window(rig) == 2 and rig.arena.committed == 2 * PER_SLOT


def test_close_hands_back_the_free_slots_and_a_running_commands_slot_goes_to_the_arena() -> (
        None):
    rig = Rig(slots=3)
    rig.command(cdbs.read_10(0, 8), edtl=8 * BS, read=True, run=False)  # its I/O runs
    rig.command(cdbs.write_10(0, 64), edtl=64 * BS, write=True, final=False)  # awaits data
    (io,) = rig.pending
    slots = rig.session.close()
    # The free slot and the aborted write's: each a distinct reservation, buffer put back.
    assert len(slots) == len({id(s) for s in slots}) == 2
    for slot in slots:
        slot.release()
    assert rig.arena.committed == PER_SLOT  # the read's slot: its buffer is in use
    rig.session.io_done(io, b"")
    assert rig.arena.committed == 0


def test_an_immediate_command_is_rejected_for_every_slot_is_promised_to_the_window() -> None:
    rig = Rig(slots=2)
    pdu = ScsiCommand(itt=7, cdb=cdbs.test_unit_ready().ljust(16, b"\0"), cmd_sn=9,
                      immediate=True, final=True)
    (reject,) = rig.send(pdu)
    assert isinstance(reject, Reject)
    assert reject.reason == RejectReason.IMMEDIATE_COMMAND_REJECT
    assert bytes(reject.data) == encode_header(pdu)[:48]
    assert rig.closed == [] and window(rig) == 2
    resp = tur(rig)
    assert (resp.exp_cmd_sn, resp.max_cmd_sn) == (2, 3)


def test_a_command_reusing_a_live_itt_or_the_reserved_one_closes_the_connection() -> None:
    for itt in (1, RESERVED_TAG):
        rig = Rig(slots=2)
        rig.command(cdbs.write_10(0, 64), edtl=64 * BS, write=True, final=False, itt=1)
        out = rig.command(cdbs.test_unit_ready(), edtl=0, itt=itt)
        assert [p.reason for p in out if isinstance(p, Reject)] == [
            RejectReason.PROTOCOL_ERROR]
        assert len(rig.closed) == 1


def test_a_command_after_a_gap_is_ignored_and_the_window_keeps_its_slots() -> None:
    rig = Rig(slots=2)
    assert rig.command(cdbs.test_unit_ready(), edtl=0, cmd_sn=2) == []  # CmdSN 1 lost
    assert (rig.session.exp_cmd_sn, window(rig)) == (1, 2)
    resp = tur(rig)
    assert (resp.exp_cmd_sn, resp.max_cmd_sn) == (2, 3)


def test_a_command_in_a_closed_window_is_ignored_and_does_not_take_its_cmdsn() -> None:
    rig = Rig(slots=1)
    rig.command(cdbs.write_10(0, 64), edtl=64 * BS, write=True, final=False)  # holds it
    assert window(rig) == 0
    assert rig.command(cdbs.test_unit_ready(), edtl=0, cmd_sn=2) == []
    assert rig.closed == [] and rig.session.exp_cmd_sn == 2


def test_a_nop_out_takes_its_cmdsn_and_gives_the_place_back_at_once() -> None:
    rig = Rig(slots=1)
    (nop_in,) = rig.send(NopOut(itt=9, ttt=RESERVED_TAG, cmd_sn=1))
    assert isinstance(nop_in, NopIn) and (nop_in.exp_cmd_sn, nop_in.max_cmd_sn) == (2, 2)
    assert rig.send(NopOut(itt=10, ttt=RESERVED_TAG, cmd_sn=5)) == []  # a gap: ignored
    rig.cmd_sn = 2
    resp = tur(rig)
    assert (resp.exp_cmd_sn, resp.max_cmd_sn) == (3, 3)


def test_a_connection_tells_the_detector_who_frees_what_it_holds() -> None:
    arena = Arena(4 << 20, levels=TargetLevel)
    portal = TargetPortal([], arena=arena, config=SessionConfig(), recv_bytes=64 * KIB)
    rig = Rig(policy=AdmissionPolicy.NONE)
    rig.command(cdbs.write_10(0, 128), edtl=128 * BS, write=True, data=b"a" * 8192,
                final=False)
    memory = core.ConnectionMemory(portal, "conn-1")
    memory.session = rig.session
    res = asyncio.run(arena.reserve(portal.connection_claim, owner="conn-1/admit"))
    assert memory.claimed(res) is not None
    assert res.owner == "conn-1"
    passive = arena.waits.passive()
    assert passive["conn-1"].freed_by == ("conn-1",)
    assert passive["conn-1"].holds == "its receive buffer"
    assert passive["conn-1/cmds"].freed_by == core.commands_freers("conn-1", rig.session)
    assert passive["conn-1/cmds"].freed_by == ("conn-1/reader",)
    (first,) = memory.session_slots()
    assert first.owner == "conn-1/slots"
    memory.release([first])
    memory.release([])  # once only: nothing is given back twice
    assert arena.committed == 0 and arena.waits.passive() == {}


def test_a_discovery_session_answers_every_scsi_command_with_illegal_request() -> None:
    rig = Rig(slots=1, session_type="Discovery")
    (resp,) = rig.command(cdbs.read_10(0, 8), edtl=8 * BS, read=True)
    assert isinstance(resp, ScsiResponse) and resp.status == 2  # CHECK CONDITION
    sense = parse_sense(parse_sense_segment(resp.data))
    assert (sense.key, sense.asc, sense.ascq) == (SenseKey.ILLEGAL_REQUEST, 0x25, 0)
    assert (resp.exp_cmd_sn, resp.max_cmd_sn) == (2, 2)  # and its slot came back


def test_without_reserve_a_read_asks_for_its_whole_buffer_without_blocking_the_reader() -> None:
    rig = Rig(policy=AdmissionPolicy.NONE)
    assert rig.command(cdbs.read_10(0, 8), edtl=8 * BS, read=True) == []
    assert [(a.task.itt, a.start, a.nbytes, a.blocking) for a in rig.allocs] == [
        (1, 0, 8 * BS, False)]
    assert rig.session.blocked is None


def test_a_connection_gone_before_its_session_gives_back_its_first_slot() -> None:
    arena = Arena(4 << 20, levels=TargetLevel)
    portal = TargetPortal([], arena=arena, config=SessionConfig(), recv_bytes=64 * KIB)
    memory = core.ConnectionMemory(portal, "conn-2")
    res = asyncio.run(arena.reserve(portal.connection_claim, owner="conn-2/admit"))
    assert memory.claimed(res) is not None
    memory.release([])
    memory.release([])
    assert arena.committed == 0 and arena.waits.passive() == {}


def test_the_portal_asks_for_bursts_its_slot_buffers_hold_and_counts_live_connections() -> (
        None):
    arena = Arena(8 << 20, levels=TargetLevel)
    portal = TargetPortal([], arena=arena, config=SessionConfig(), recv_bytes=128 * KIB)
    wants = dict(portal.login_wants)
    del wants["MaxRecvDataSegmentLength"]  # the framer's rule, not admission's
    assert wants == {"MaxBurstLength": str(256 * KIB), "FirstBurstLength": "65536",
                     "InitialR2T": "No"}
    assert portal.max_slots == 64
    alone = portal.fair_share()
    gone = [portal.connection_opened() for _ in range(3)]
    assert portal.fair_share() < alone
    for conn_id in gone:
        assert not portal.connection_closed(conn_id)
    share = portal.fair_share()
    assert share == alone and isinstance(share, int)


def test_without_reserve_a_command_whose_io_returns_after_close_frees_its_buffer() -> None:
    rig = Rig(policy=AdmissionPolicy.NONE)
    rig.command(cdbs.read_10(0, 8), edtl=8 * BS, read=True)
    (req,) = rig.allocs
    rig.session.allocated(req, asyncio.run(rig.arena.allocate(TargetLevel.BUFFER, req.nbytes,
                                                              owner="c")))
    rig.pump(run=False)
    (io,) = rig.pending
    assert rig.session.close() == [] and rig.arena.committed == 4 * KIB
    rig.session.io_done(io, run_io(io))
    assert rig.arena.committed == 0
