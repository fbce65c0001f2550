"""The target session, sans-I/O: PDUs in, PDUs and I/O requests out, played by hand."""

from __future__ import annotations

import asyncio
import struct

import pytest

from earmark.iscsi.negotiation import SessionParams
from earmark.iscsi.opcodes import RejectReason, TmfFunction, TmfResponse
from earmark.iscsi.pdu import (
    R2T,
    RESERVED_TAG,
    DataIn,
    DataOut,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Pdu,
    Reject,
    ScsiCommand,
    ScsiResponse,
    SnackRequest,
    TaskMgmtRequest,
    TaskMgmtResponse,
    encode_header,
    parse_sense_segment,
)
from earmark.memory import Arena, Buffer, Reservation
from earmark.memory.levels import TargetLevel
from earmark.scsi import cdb as cdbs
from earmark.scsi.disk import Disk
from earmark.scsi.inquiry import lu_designators
from earmark.scsi.sense import parse_sense
from earmark.target.backing import MemoryBacking
from earmark.target.events import AllocRequest, CloseConnection, IoRequest
from earmark.target.executor import run_io
from earmark.target.session import UNSENT_HIGH, AdmissionPolicy, SessionConfig, TargetSession
from earmark.target.unit import LogicalUnit
from tests.wire_reader import WireReader

KIB = 1024
BUF = 64 * KIB
BS = 512
SLOT: dict[int, int] = {TargetLevel.SLOT: 256, TargetLevel.BUFFER: BUF}


class Rig:
    """A session plus the runtime's part, done synchronously."""

    def __init__(self, *, slots: int = 4, policy: AdmissionPolicy = AdmissionPolicy.RESERVE,
                 arena: Arena | None = None, backing: MemoryBacking | None = None,
                 **params: object) -> None:
        # The fuzz harness brings its own arena (idle) and disk, made once, not per run.
        self.arena = arena or Arena(4 << 20, levels=TargetLevel)
        self.backing = backing or MemoryBacking(4 << 20)
        disk = Disk(self.backing.size // BS, "S1", block_size=BS)
        self.unit = LogicalUnit(0, disk, self.backing)
        base: dict[str, object] = {
            "initiator_mrdsl": 8 * KIB, "max_burst_length": 32 * KIB,
            "first_burst_length": 16 * KIB, "initial_r2t": False, "immediate_data": True,
        }
        base.update(params)
        self.params = SessionParams(**base)  # type: ignore[arg-type]
        reserve = policy is AdmissionPolicy.RESERVE
        self.slots = [self.reserve() for _ in range(slots)] if reserve else []
        self.session = TargetSession(
            self.params, {0: self.unit}, exp_cmd_sn=1, stat_sn=100, slots=self.slots,
            config=SessionConfig(policy=policy, buffer_bytes=BUF, window=4, nop_interval=5.0,
                                 nop_timeout=10.0),
        )
        self.reader = WireReader(1 << 24)
        self.cmd_sn = 1
        self.now = 0.0
        self.closed: list[str] = []
        self.allocs: list[AllocRequest] = []
        self.pending: list[IoRequest] = []

    def reserve(self) -> Reservation:
        slot = self.arena.reserve_now(SLOT, owner="slots")
        assert slot is not None, "the rig's arena holds every slot a test asks for"
        return slot

    def send(self, pdu: Pdu, *, run: bool = True) -> list[Pdu]:
        self.session.receive(pdu, self.now)
        return self.pump(run=run)

    def pump(self, *, run: bool = True) -> list[Pdu]:
        out: list[Pdu] = []
        while True:
            out += self.reader.feed(b"".join(self.session.data_to_send()))
            event = self.session.next_event()
            if event is None:
                return out
            if isinstance(event, IoRequest):
                if run:
                    self.session.io_done(event, run_io(event))
                else:
                    self.pending.append(event)
            elif isinstance(event, CloseConnection):
                self.closed.append(event.reason)
            elif isinstance(event, AllocRequest):
                self.allocs.append(event)

    def command(self, cdb: bytes, *, edtl: int, read: bool = False, write: bool = False,
                data: bytes = b"", final: bool = True, itt: int | None = None,
                cmd_sn: int | None = None, run: bool = True) -> list[Pdu]:
        sn = self.cmd_sn if cmd_sn is None else cmd_sn
        if cmd_sn is None:
            self.cmd_sn += 1
        pdu = ScsiCommand(itt=sn if itt is None else itt, cdb=cdb.ljust(16, b"\0"),
                          expected_data_transfer_length=edtl, cmd_sn=sn, read=read,
                          write=write, final=final, data=data)
        return self.send(pdu, run=run)


def status_of(pdus: list[Pdu]) -> ScsiResponse | DataIn:
    last = pdus[-1]
    assert isinstance(last, ScsiResponse) or (isinstance(last, DataIn) and last.status_present)
    return last


def test_window_advertises_only_reserved_slots_and_grows_with_each_grant() -> None:
    rig = Rig(slots=2)
    (resp,) = rig.command(cdbs.test_unit_ready(), edtl=0)
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    # Two slots held: ExpCmdSN 2, room for CmdSN 2 and 3.
    assert (resp.exp_cmd_sn, resp.max_cmd_sn) == (2, 3)
    rig.session.slot_target = 3
    assert rig.session.slot_demand() == 1
    rig.session.add_slot(rig.reserve())
    (resp,) = rig.command(cdbs.test_unit_ready(), edtl=0)
    assert isinstance(resp, ScsiResponse) and (resp.exp_cmd_sn, resp.max_cmd_sn) == (3, 5)
    assert rig.arena.committed == 3 * (256 + BUF)


def test_commands_outside_the_window_are_ignored_silently() -> None:
    rig = Rig(slots=1)
    assert rig.command(cdbs.test_unit_ready(), edtl=0, cmd_sn=2) == []  # above MaxCmdSN
    assert rig.command(cdbs.test_unit_ready(), edtl=0, cmd_sn=0) == []  # below ExpCmdSN
    (resp,) = rig.command(cdbs.test_unit_ready(), edtl=0)
    assert isinstance(resp, ScsiResponse) and resp.exp_cmd_sn == 2


def test_a_command_after_a_gap_in_the_window_is_ignored_and_the_window_stays() -> None:
    # Found by the session fuzzer (tests/fuzz/crashes/session/window-gap-cmdsn): CmdSN 3
    # with ExpCmdSN 1 was executed, and its slot coming back widened the window.
    rig = Rig(slots=4)
    assert rig.command(cdbs.test_unit_ready(), edtl=0, cmd_sn=3) == []
    assert (rig.session.exp_cmd_sn, rig.session.max_cmd_sn) == (1, 4)
    (resp,) = rig.command(cdbs.test_unit_ready(), edtl=0)
    assert isinstance(resp, ScsiResponse) and (resp.exp_cmd_sn, resp.max_cmd_sn) == (2, 5)


def test_an_overflow_beyond_32_bits_reports_the_largest_residual() -> None:
    # Found by the session fuzzer (tests/fuzz/crashes/session/residual-over-32-bits): the
    # residual of WRITE(16) of 2**32 - 1 blocks did not fit its field, and packing raised.
    rig = Rig()
    (resp,) = rig.command(cdbs.write_16(0, 0xFFFFFFFF), edtl=0, write=True)
    assert isinstance(resp, ScsiResponse) and resp.status == 2
    assert resp.residual_overflow and resp.residual_count == 0xFFFFFFFF


def test_write_takes_immediate_unsolicited_then_r2t_bursts_and_reuses_one_buffer() -> None:
    rig = Rig()
    payload = bytes(range(256)) * (160 * KIB // 256)  # 160 KiB: three 64 KiB windows
    nblocks = len(payload) // BS
    out = rig.command(cdbs.write_10(8, nblocks), edtl=len(payload), write=True,
                      data=payload[: 8 * KIB], final=False)
    # The first window is 64 KiB; unsolicited data covers [0, 16K): R2T for the next 32K.
    (r2t,) = [p for p in out if isinstance(p, R2T)]
    out = rig.send(DataOut(itt=1, ttt=RESERVED_TAG, data_sn=0, buffer_offset=8 * KIB,
                           final=True, data=payload[8 * KIB : 16 * KIB]))
    assert out == []
    offsets = []
    while True:
        offsets.append((r2t.buffer_offset, r2t.desired_data_transfer_length))
        start, n = r2t.buffer_offset, r2t.desired_data_transfer_length
        replies: list[Pdu] = []
        for i, pos in enumerate(range(start, start + n, 8 * KIB)):
            replies += rig.send(DataOut(itt=1, ttt=r2t.ttt, data_sn=i, buffer_offset=pos,
                                        final=pos + 8 * KIB >= start + n,
                                        data=payload[pos : pos + 8 * KIB]))
        nxt = [p for p in replies if isinstance(p, R2T)]
        if not nxt:
            break
        (r2t,) = nxt
    assert offsets == [(16 * KIB, 32 * KIB), (48 * KIB, 16 * KIB), (64 * KIB, 32 * KIB),
                       (96 * KIB, 32 * KIB), (128 * KIB, 32 * KIB)]
    resp = status_of(replies)
    assert isinstance(resp, ScsiResponse) and resp.status == 0 and resp.residual_count == 0
    assert rig.backing._data[8 * BS : 8 * BS + len(payload)] == payload
    # One buffer per slot, drawn once and kept with its slot for the next command:
    # nothing more was drawn for the five bursts, nothing is left over.
    assert all(s.held[TargetLevel.BUFFER] == BUF and s.budget[TargetLevel.BUFFER] == 0
               for s in rig.slots)


def test_a_write_whose_data_all_came_with_it_is_one_io_over_its_slots_buffer() -> None:
    rig = Rig()
    payload = bytes(range(256)) * (8 * KIB // 256)
    window = rig.session.max_cmd_sn
    out = rig.command(cdbs.write_10(16, len(payload) // BS), edtl=len(payload), write=True,
                      data=payload, run=False)
    assert out == []  # no R2T: nothing more is to come
    (io,) = rig.pending
    (view,) = io.views
    assert (io.offset, io.last, bytes(view)) == (0, True, payload)
    # The data was copied into the slot's buffer, not left pointing into the PDU's.
    buffers = [bytes(buf.segments[0][: len(payload)]) for buf in rig.session._slot_buf.values()]
    assert buffers.count(payload) == 1
    rig.session.io_done(io, run_io(io))
    resp = status_of(rig.pump())
    assert isinstance(resp, ScsiResponse) and resp.status == 0 and resp.residual_count == 0
    assert rig.backing._data[16 * BS : 16 * BS + len(payload)] == payload
    assert rig.session.max_cmd_sn == window + 1 and not rig.session.tasks


def test_data_in_is_cut_at_mrdsl_with_status_on_the_last_pdu() -> None:
    rig = Rig()
    rig.backing._data[:40 * BS] = bytes(range(256)) * (40 * BS // 256)
    out = rig.command(cdbs.read_10(0, 40), edtl=40 * BS, read=True)
    assert all(isinstance(p, DataIn) for p in out)
    assert [len(p.data) for p in out if isinstance(p, DataIn)] == [8192, 8192, 4096]
    assert [p.data_sn for p in out if isinstance(p, DataIn)] == [0, 1, 2]
    last = status_of(out)
    assert isinstance(last, DataIn) and last.final and last.stat_sn == 100
    assert b"".join(bytes(p.data) for p in out if isinstance(p, DataIn)) == bytes(
        rig.backing._data[: 40 * BS])


def test_large_read_goes_through_the_buffer_window_by_window() -> None:
    rig = Rig()
    n = 3 * BUF // BS
    out = rig.command(cdbs.read_10(0, n), edtl=n * BS, read=True, run=False)
    assert out == []
    (io,) = rig.pending
    assert sum(len(v) for v in io.views) == BUF
    rig.session.io_done(io, run_io(io))
    out = rig.pump()
    assert sum(len(p.data) for p in out if isinstance(p, DataIn)) == 3 * BUF


@pytest.mark.parametrize(
    ("blocks", "edtl", "over", "under", "residual", "moved"),
    [(1, 200, True, False, BS - 200, 200), (1, 10000, False, True, 10000 - BS, BS),
     (2, BS, True, False, BS, BS), (1, 0, True, False, BS, 0)],
)
def test_read_residuals_move_the_minimum_and_report_the_rest(
    blocks: int, edtl: int, over: bool, under: bool, residual: int, moved: int
) -> None:
    rig = Rig()
    out = rig.command(cdbs.read_10(0, blocks), edtl=edtl, read=True)
    last = status_of(out)
    assert last.status == 0
    assert (last.residual_overflow, last.residual_underflow) == (over, under)
    assert last.residual_count == residual
    assert sum(len(p.data) for p in out if isinstance(p, DataIn)) == moved


def test_write_with_edtl_below_the_cdb_writes_only_what_was_sent_with_overflow() -> None:
    rig = Rig()
    rig.backing._data[: 2 * BS] = b"a" * (2 * BS)
    out = rig.command(cdbs.write_10(0, 2), edtl=200, write=True, data=b"b" * 200)
    resp = status_of(out)
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    assert resp.residual_overflow and resp.residual_count == 2 * BS - 200
    assert rig.backing._data[: 2 * BS] == b"b" * 200 + b"a" * (2 * BS - 200)


def test_write_with_edtl_above_the_cdb_writes_the_cdb_length_and_reports_underflow() -> None:
    rig = Rig()
    out = rig.command(cdbs.write_10(0, 1), edtl=2 * BS, write=True, data=b"b" * (2 * BS))
    resp = status_of(out)
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    assert resp.residual_underflow and resp.residual_count == BS
    assert rig.backing._data[: 2 * BS] == b"b" * BS + bytes(BS)


def test_nop_out_is_echoed_and_an_idle_initiator_is_pinged_then_dropped() -> None:
    rig = Rig()
    (nop,) = rig.send(NopOut(itt=7, cmd_sn=1, immediate=True, data=b"ping"))
    assert isinstance(nop, NopIn) and nop.itt == 7 and bytes(nop.data) == b"ping"
    assert rig.session.timer() == 5.0
    rig.session.handle_timer(5.0)
    (ping,) = rig.pump()
    assert isinstance(ping, NopIn) and ping.itt == RESERVED_TAG and ping.ttt != RESERVED_TAG
    rig.now = 5.0
    rig.send(NopOut(itt=RESERVED_TAG, ttt=ping.ttt, cmd_sn=1, immediate=True))
    assert rig.session.timer() == 10.0  # answered: the next ping is due after idling again
    rig.now = 10.0
    rig.session.handle_timer(10.0)
    rig.pump()
    rig.session.handle_timer(20.0)
    rig.pump()
    assert rig.closed and "no answer" in rig.closed[0]


def test_logout_answers_and_closes() -> None:
    rig = Rig()
    (resp,) = rig.send(LogoutRequest(reason=0, itt=9, cmd_sn=1, immediate=True))
    assert isinstance(resp, LogoutResponse) and resp.response == 0 and resp.itt == 9
    assert rig.closed == ["session: logged out"]


def test_abort_task_ends_a_write_waiting_for_data_and_frees_its_buffer() -> None:
    rig = Rig(slots=1)
    out = rig.command(cdbs.write_10(0, 64), edtl=64 * BS, write=True, itt=0x55)
    assert any(isinstance(p, R2T) for p in out)
    assert rig.session.tasks[0x55].pieces  # the write holds its slot's buffer
    (resp,) = rig.send(TaskMgmtRequest(function=TmfFunction.ABORT_TASK, itt=0x56,
                                       referenced_task_tag=0x55, cmd_sn=2, ref_cmd_sn=1))
    assert isinstance(resp, TaskMgmtResponse) and resp.response == TmfResponse.FUNCTION_COMPLETE
    # The buffer went back with the slot, for the next command; nothing else is drawn.
    assert not rig.session.tasks and rig.slots[0].held[TargetLevel.BUFFER] == BUF
    # Data for the aborted task is dropped without a word; the window is open again.
    assert rig.send(DataOut(itt=0x55, ttt=1, data_sn=0, buffer_offset=0, data=b"x" * BS)) == []
    (resp,) = rig.command(cdbs.test_unit_ready(), edtl=0)
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    (resp,) = rig.send(TaskMgmtRequest(function=TmfFunction.ABORT_TASK, itt=0x57,
                                       referenced_task_tag=0x99, cmd_sn=3, ref_cmd_sn=9,
                                       immediate=True))
    assert isinstance(resp, TaskMgmtResponse)
    assert resp.response == TmfResponse.TASK_DOES_NOT_EXIST


def test_abort_task_is_answered_only_once_the_tasks_io_has_returned() -> None:
    """A write whose data is in the backing's hands is not over until that returns: the
    answer waits, so nothing the initiator sends after it can be overtaken by the write."""
    rig = Rig(slots=2)
    data = bytes(range(256)) * 16
    out = rig.command(cdbs.write_10(0, 8), edtl=4096, write=True, data=data, itt=0x61,
                      run=False)
    assert out == [] and len(rig.pending) == 1  # the write is on its way to the disk
    assert rig.send(TaskMgmtRequest(function=TmfFunction.ABORT_TASK, itt=0x62,
                                    referenced_task_tag=0x61, cmd_sn=2, ref_cmd_sn=1,
                                    immediate=True)) == []
    assert rig.session.tasks == {}  # ended; only its I/O is still out
    io = rig.pending.pop()
    rig.session.io_done(io, run_io(io))
    (resp,) = rig.pump()
    assert isinstance(resp, TaskMgmtResponse) and resp.itt == 0x62
    assert resp.response == TmfResponse.FUNCTION_COMPLETE  # and no status for the write
    # Its slot is free again: the window admits the next command.
    (resp,) = rig.command(cdbs.test_unit_ready(), edtl=0, cmd_sn=2)
    assert isinstance(resp, ScsiResponse) and resp.status == 0


@pytest.mark.parametrize("fn", [TmfFunction.ABORT_TASK_SET, TmfFunction.LOGICAL_UNIT_RESET,
                                TmfFunction.TARGET_WARM_RESET])
def test_task_set_resets_abort_everything_on_the_lun(fn: TmfFunction) -> None:
    rig = Rig()
    rig.command(cdbs.write_10(0, 8), edtl=8 * BS, write=True, itt=1)
    rig.command(cdbs.write_10(8, 8), edtl=8 * BS, write=True, itt=2)
    (resp,) = rig.send(TaskMgmtRequest(function=fn, itt=3, cmd_sn=3, immediate=True))
    assert isinstance(resp, TaskMgmtResponse) and resp.response == 0
    assert rig.session.tasks == {}


def test_snack_and_unknown_tmf_are_refused() -> None:
    rig = Rig()
    (rej,) = rig.send(SnackRequest(itt=1))
    assert isinstance(rej, Reject) and rej.reason == RejectReason.PROTOCOL_ERROR
    assert bytes(rej.data) == encode_header(SnackRequest(itt=1))
    (resp,) = rig.send(TaskMgmtRequest(function=0x33, itt=3, cmd_sn=1, immediate=True))
    assert isinstance(resp, TaskMgmtResponse) and resp.response == TmfResponse.FUNCTION_REJECTED


@pytest.mark.parametrize("data_sns", [(5,), (1, 0), (0, 0), (0xFFFFFFFF,)])
def test_bad_data_sn_ends_the_command_with_crc_error_and_the_session_goes_on(
    data_sns: tuple[int, ...],
) -> None:
    rig = Rig(first_burst_length=512, initial_r2t=True)
    out = rig.command(cdbs.write_10(0, 2), edtl=2 * BS, write=True)
    (r2t,) = [p for p in out if isinstance(p, R2T)]
    replies: list[Pdu] = []
    for i, sn in enumerate(data_sns):
        replies += rig.send(DataOut(itt=1, ttt=r2t.ttt, data_sn=sn, buffer_offset=i * BS,
                                    final=i == len(data_sns) - 1, data=b"x" * BS))
    (resp,) = replies
    assert isinstance(resp, ScsiResponse) and resp.status == 2 and not rig.closed
    sense = parse_sense(parse_sense_segment(resp.data))
    assert (sense.key, sense.code) == (0xB, 0x4705)
    assert rig.session.tasks == {} and rig.backing.size  # nothing left behind
    out = rig.command(cdbs.test_unit_ready(), edtl=0)
    assert isinstance(out[-1], ScsiResponse) and out[-1].status == 0


def test_unknown_lun_answers_logical_unit_not_supported() -> None:
    rig = Rig()
    rig.session.receive(ScsiCommand(itt=1, cdb=cdbs.test_unit_ready().ljust(16, b"\0"),
                                    cmd_sn=1, lun=5), 0.0)
    (resp,) = rig.pump()
    assert isinstance(resp, ScsiResponse) and resp.status == 2
    assert parse_sense(parse_sense_segment(resp.data)).code == 0x2500


def test_policy_none_allocates_per_burst_and_blocks_the_reader_for_unsolicited_data() -> None:
    rig = Rig(policy=AdmissionPolicy.NONE)
    out = rig.command(cdbs.write_10(0, 128), edtl=128 * BS, write=True, data=b"a" * 8192,
                      final=False)
    assert out == []  # nothing may go out before the buffers exist
    assert rig.session.blocked is rig.allocs[0]
    assert [(a.start, a.nbytes, a.blocking) for a in rig.allocs] == [
        (0, 16 * KIB, True), (16 * KIB, 32 * KIB, False)]

    async def grant(req: AllocRequest) -> Buffer:
        return await rig.arena.allocate(TargetLevel.BUFFER, req.nbytes, owner="t")

    for req in list(rig.allocs):
        rig.session.allocated(req, asyncio.run(grant(req)))
    assert rig.session.blocked is None
    out = rig.pump()
    assert [p.buffer_offset for p in out if isinstance(p, R2T)] == [16 * KIB]
    assert rig.arena.committed == 48 * KIB  # held until the whole command is written


def _copy_list(n: int, src: int, dst: int, disk: Disk) -> bytes:
    cscd = (bytes((0xE4, 0, 0, 0)) + lu_designators(disk)[0].ljust(20, b"\0") + bytes(5)
            + disk.block_size.to_bytes(3, "big"))
    seg = struct.pack(">BBHHHHHQQ", 0x02, 0, 0x18, 0, 0, 0, n, src, dst)
    return struct.pack(">BBHIII", 7, 0, len(cscd), 0, len(seg), 0) + cscd + seg


@pytest.mark.parametrize("policy", [AdmissionPolicy.RESERVE, AdmissionPolicy.NONE])
def test_extended_copy_moves_overlapping_blocks_through_one_buffer(policy: AdmissionPolicy) -> None:
    rig = Rig(policy=policy)
    original = bytes(range(256)) * (400 * BS // 256)
    rig.backing._data[: len(original)] = original
    n = 300  # 150 KiB: three chunks of the 64 KiB buffer, copied back to front
    plist = _copy_list(n, 0, 100, rig.unit.disk)
    xcopy = struct.pack(">BB8sIBB", 0x83, 0, bytes(8), len(plist), 0, 0)
    out = rig.command(xcopy, edtl=len(plist), write=True, data=plist, run=False)

    async def grant(req: AllocRequest) -> Buffer:
        return await rig.arena.allocate(TargetLevel.BUFFER, req.nbytes, owner="t")

    while rig.allocs:  # `none`: the list's buffer, then the copy's
        req = rig.allocs.pop(0)
        rig.session.allocated(req, asyncio.run(grant(req)))
        out += rig.pump(run=False)
    (io,) = rig.pending
    assert sum(len(v) for v in io.views) == BUF  # one buffer, not the copy's 150 KiB
    rig.session.io_done(io, run_io(io))
    out += rig.pump()
    resp = status_of(out)
    assert isinstance(resp, ScsiResponse) and resp.status == 0
    assert rig.backing._data[100 * BS : (100 + n) * BS] == original[: n * BS]
    assert rig.backing._data[: 100 * BS] == original[: 100 * BS]
    rcr = struct.pack(">BBB7sIBB", 0x84, 0, 7, bytes(7), 1024, 0, 0)
    status = status_of(rig.command(rcr, edtl=1024, read=True))
    assert isinstance(status, DataIn)
    assert struct.unpack(">IBHBI", status.data) == (8, 0, 1, 0, n * BS)
    if policy is AdmissionPolicy.NONE:
        assert rig.arena.committed == 0  # both buffers went back with the command



def _cdbs(opcode: int, lba: int, nblocks: int) -> list[bytes]:
    """CDBs of the size its opcode's group gives it (SAM-5 5.2), with this LBA and
    transfer length where READ and WRITE of that size keep them (and WRITE ATOMIC(16)
    its own)."""
    group = opcode >> 5
    if group == 0:
        return [struct.pack(">BBHBB", opcode, lba >> 16, lba & 0xFFFF, nblocks, 0)]
    if group in (1, 2):
        return [struct.pack(">BBIBHB", opcode, 0, lba, 0, nblocks, 0)]
    if group == 5:
        return [struct.pack(">BBIIBB", opcode, 0, lba, nblocks, 0, 0)]
    return [struct.pack(">BBQIBB", opcode, 0, lba, nblocks, 0, 0),
            struct.pack(">BBQHHBB", opcode, 0, lba, 0, nblocks, 0, 0)]


def test_a_read_or_write_plan_says_how_much_data_out_its_command_has() -> None:
    """The session looks at a CDB once: a ReadPlan's command has no Data-Out, a
    WritePlan's has its blocks (what `sbc.data_out_length` would say)."""
    from earmark.scsi import sbc
    from earmark.scsi.plans import ReadPlan, WritePlan
    disk = Disk(1 << 16, "S1", block_size=BS, max_atomic_blocks=8)
    planned = set()
    for opcode in range(256):
        for cdb in _cdbs(opcode, 8, 4):
            outcome = sbc.execute(cdb, disk, edtl=4 * BS)
            if isinstance(outcome, ReadPlan | WritePlan):
                planned.add(opcode)
                expected = outcome.nblocks * BS if isinstance(outcome, WritePlan) else 0
                assert (opcode, sbc.data_out_length(cdb, disk)) == (opcode, expected)
    # READ and WRITE (6, 10, 12, 16), WRITE AND VERIFY (10, 12, 16), WRITE ATOMIC (16)
    assert planned == {0x08, 0x0A, 0x28, 0x2A, 0x2E, 0x88, 0x8A, 0x8E, 0x9C, 0xA8, 0xAA, 0xAE}


def test_a_read_done_while_data_in_is_paused_keeps_its_answer_until_released() -> None:
    """The transport is full (no `data_in_room`): a read whose I/O is done sends nothing
    and keeps its slot's buffer; released, it answers whole; an ABORT TASK or the
    connection's end gives its slot back at once."""
    rig = Rig(slots=2)
    rig.backing.write(0, [memoryview(b"r" * 4096)])
    rig.session.data_in_room = 0
    assert rig.command(cdbs.read_10(0, 8), edtl=4096, read=True, itt=0x71) == []
    assert rig.session.answers_held == 1 and 0x71 in rig.session.tasks
    rig.session.release_data_in(UNSENT_HIGH + 1)  # still full: nothing
    assert rig.pump() == [] and rig.session.answers_held == 1
    rig.session.release_data_in(0)
    (resp,) = rig.pump()
    assert isinstance(resp, DataIn) and resp.status_present and bytes(resp.data) == b"r" * 4096
    assert rig.session.answers_held == 0 and not rig.session.tasks
    # Held again, then aborted: answered at once, its slot back (the next command fits).
    rig.session.data_in_room = 0
    assert rig.command(cdbs.read_10(0, 8), edtl=4096, read=True, itt=0x72) == []
    (resp,) = rig.send(TaskMgmtRequest(function=TmfFunction.ABORT_TASK, itt=0x73,
                                       referenced_task_tag=0x72, cmd_sn=3, ref_cmd_sn=2,
                                       immediate=True))
    assert isinstance(resp, TaskMgmtResponse) and resp.response == TmfResponse.FUNCTION_COMPLETE
    assert rig.session.answers_held == 0 and not rig.session.tasks
    # Held, then the connection ends: every slot comes back to be released.
    assert rig.command(cdbs.read_10(0, 8), edtl=4096, read=True, itt=0x74) == []
    assert rig.command(cdbs.read_10(8, 8), edtl=4096, read=True, itt=0x75) == []
    assert rig.session.answers_held == 2
    assert len(rig.session.close()) == 2
