"""The sans-I/O initiator session driven PDU by PDU: window, R2T, Data-In, sense, NOP, timeouts."""

from __future__ import annotations

import os
from typing import cast

import pytest

from earmark.initiator.errors import (
    CommandAbortedError,
    CommandRejectedError,
    ScsiStatusError,
)
from earmark.initiator.failure import FailureKind
from earmark.initiator.session import Command, InitiatorSession, Timeouts
from earmark.iscsi.negotiation import SessionParams
from earmark.iscsi.opcodes import TmfFunction, TmfResponse
from earmark.iscsi.pdu import (
    R2T,
    RESERVED_TAG,
    AsyncMessage,
    DataIn,
    DataOut,
    NopIn,
    NopOut,
    Pdu,
    Reject,
    ScsiCommand,
    ScsiResponse,
    TaskMgmtRequest,
    TaskMgmtResponse,
    encode_header,
    sense_segment,
)
from earmark.scsi import cdb as C
from earmark.scsi.sense import ScsiError, SenseKey, lba_out_of_range
from tests.wire_reader import WireReader


def make(
    *, window: int = 32, now: float = 0.0, timeouts: Timeouts | None = None, **params: object
) -> InitiatorSession:
    p = SessionParams(**params)  # type: ignore[arg-type]
    return InitiatorSession(p, cmd_sn=10, exp_cmd_sn=10, max_cmd_sn=10 + window - 1,
                            exp_stat_sn=5, now=now, timeouts=timeouts)


def sent(session: InitiatorSession) -> list[Pdu]:
    wire = b"".join(bytes(piece) for piece in session.data_to_send())
    return WireReader(1 << 24).feed(wire)


def read_cmd(n: int = 4096) -> Command:
    return Command(C.read_16(0, n // 512), lun=1, read_into=memoryview(bytearray(n)))


def test_window_never_passes_max_cmd_sn() -> None:
    s = make(window=2)
    cmds = [read_cmd() for _ in range(5)]
    for c in cmds:
        s.submit(c, 0.0)
    out = sent(s)
    assert [p.cmd_sn for p in out if isinstance(p, ScsiCommand)] == [10, 11]
    assert s.queued == 3 and s.outstanding == 2
    # The first answer opens the window by two more.
    s.receive(DataIn(itt=cmds[0].itt, data=bytes(4096), buffer_offset=0, final=True,
                     status_present=True, stat_sn=5, exp_cmd_sn=11, max_cmd_sn=13), 0.0)
    out = sent(s)
    assert [p.cmd_sn for p in out if isinstance(p, ScsiCommand)] == [12, 13]
    assert [c.itt for c in s.take_completed()] == [cmds[0].itt]
    assert s.exp_stat_sn == 6
    # A stale MaxCmdSN (smaller than what we know) never shrinks the window back.
    s.receive(DataIn(itt=cmds[1].itt, final=True, status_present=True, stat_sn=6,
                     exp_cmd_sn=12, max_cmd_sn=12, data=b""), 0.0)
    assert s.max_cmd_sn == 13 and sent(s) == []


def test_window_closed_then_opened_by_nop_in() -> None:
    s = make(window=0)  # MaxCmdSN = ExpCmdSN - 1: closed
    c = read_cmd()
    s.submit(c, 0.0)
    assert sent(s) == [] and s.queued == 1
    s.receive(NopIn(itt=RESERVED_TAG, ttt=RESERVED_TAG, stat_sn=5, exp_cmd_sn=10,
                    max_cmd_sn=10), 0.0)
    (pdu,) = sent(s)
    assert isinstance(pdu, ScsiCommand) and pdu.cmd_sn == 10 and pdu.itt == c.itt


def test_itts_are_unique_among_outstanding_commands() -> None:
    s = make()
    cmds = [read_cmd() for _ in range(20)]
    for c in cmds:
        s.submit(c, 0.0)
    assert len({c.itt for c in cmds}) == 20 and RESERVED_TAG not in {c.itt for c in cmds}


def test_r2t_answered_with_data_out_within_limits() -> None:
    s = make(target_mrdsl=8192, immediate_data=False, initial_r2t=True, max_burst_length=32768)
    payload = os.urandom(65536)
    c = Command(C.write_16(0, 128), lun=1, write_data=memoryview(payload))
    s.submit(c, 0.0)
    (cmd,) = sent(s)
    assert isinstance(cmd, ScsiCommand) and cmd.write and cmd.final and not cmd.data
    assert cmd.expected_data_transfer_length == 65536
    s.receive(R2T(itt=c.itt, ttt=77, stat_sn=5, exp_cmd_sn=11, max_cmd_sn=50, r2t_sn=0,
                  buffer_offset=32768, desired_data_transfer_length=32768), 0.0)
    outs = sent(s)
    assert all(isinstance(p, DataOut) for p in outs)
    assert [(p.buffer_offset, len(p.data), p.data_sn, p.final, p.ttt)  # type: ignore[union-attr]
            for p in outs] == [(32768 + i * 8192, 8192, i, i == 3, 77) for i in range(4)]
    assert b"".join(bytes(p.data) for p in outs) == payload[32768:]  # type: ignore[union-attr]
    # An R2T beyond the burst limit or the command is a protocol violation.
    s.receive(R2T(itt=c.itt, ttt=78, buffer_offset=0, desired_data_transfer_length=65536,
                  exp_cmd_sn=11, max_cmd_sn=50), 0.0)
    assert s.failure is not None and "MaxBurstLength" in s.failure.reason
    assert s.failure.kind is FailureKind.PROTOCOL


def test_immediate_and_unsolicited_data_within_first_burst() -> None:
    s = make(target_mrdsl=8192, immediate_data=True, initial_r2t=False,
             first_burst_length=20480)
    payload = os.urandom(65536)
    c = Command(C.write_16(0, 128), lun=1, write_data=memoryview(payload))
    s.submit(c, 0.0)
    out = sent(s)
    cmd, *douts = out
    assert isinstance(cmd, ScsiCommand) and bytes(cmd.data) == payload[:8192] and not cmd.final
    assert [(p.buffer_offset, len(p.data), p.ttt, p.final)  # type: ignore[union-attr]
            for p in douts] == [(8192, 8192, RESERVED_TAG, False),
                                (16384, 4096, RESERVED_TAG, True)]
    # The target asks for the rest with an R2T, starting where the first burst ended.
    s.receive(R2T(itt=c.itt, ttt=9, buffer_offset=20480, desired_data_transfer_length=45056,
                  exp_cmd_sn=11, max_cmd_sn=50), 0.0)
    rest = sent(s)
    assert sum(len(cast(DataOut, p).data) for p in rest) == 45056
    s.receive(ScsiResponse(itt=c.itt, status=0, stat_sn=5, exp_cmd_sn=11, max_cmd_sn=50), 0.0)
    (done,) = s.take_completed()
    assert done is c and c.error is None and c.status == 0


def test_small_write_is_one_pdu_with_immediate_data() -> None:
    s = make(target_mrdsl=65536, immediate_data=True, initial_r2t=True)
    c = Command(C.write_16(0, 8), write_data=memoryview(b"x" * 4096))
    s.submit(c, 0.0)
    (cmd,) = sent(s)
    assert isinstance(cmd, ScsiCommand) and cmd.final and bytes(cmd.data) == b"x" * 4096


@pytest.mark.parametrize("digests", [False, True])
def test_write_from_pieces_is_the_wire_of_one_buffer_without_joining(digests: bool) -> None:
    """A run of pages goes out as it is: segments that span pages are sent as their
    pieces (and digested across them), byte for byte what one buffer would give."""
    sizes = [4096] * 5 + [1001, 4096, 3]  # odd sizes: padding and unaligned boundaries
    pages = [memoryview(bytearray(os.urandom(n))) for n in sizes]
    payload = b"".join(pages)
    wires = []
    for data in (memoryview(payload), pages):
        s = make(target_mrdsl=6000, immediate_data=True, initial_r2t=False,
                 first_burst_length=12000, header_digest=digests, data_digest=digests)
        c = Command(C.write_16(0, 48), lun=1, write_data=data)
        s.submit(c, 0.0)
        s.receive(R2T(itt=c.itt, ttt=5, buffer_offset=12000,
                      desired_data_transfer_length=len(payload) - 12000,
                      exp_cmd_sn=11, max_cmd_sn=50), 0.0)
        pieces = s.data_to_send()
        wires.append(b"".join(bytes(p) for p in pieces))
        if data is pages:
            assert c.length == len(payload)
            assert {id(p.obj) for p in pieces if isinstance(p, memoryview)} == {
                id(page.obj) for page in pages}
    assert wires[0] == wires[1]
    reader = WireReader(1 << 24, digests, digests)
    outs = reader.feed(wires[1])
    assert b"".join(bytes(p.data) for p in outs) == payload  # type: ignore[union-attr]


def test_answering_names_the_command_a_pdu_belongs_to() -> None:
    s = make()
    c = read_cmd()
    s.submit(c, 0.0)
    for pdu in (DataIn(itt=c.itt), R2T(itt=c.itt), ScsiResponse(itt=c.itt)):
        assert s.answering(memoryview(encode_header(pdu))) is c
    assert s.answering(memoryview(encode_header(ScsiResponse(itt=c.itt + 1)))) is None
    assert s.answering(memoryview(encode_header(NopIn(itt=c.itt)))) is None


def test_data_in_split_out_of_order_lands_in_the_buffer() -> None:
    s = make()
    payload = os.urandom(12288)
    c = read_cmd(12288)
    s.submit(c, 0.0)
    sent(s)
    for offset in (8192, 0, 4096):
        last = offset == 4096
        s.receive(DataIn(itt=c.itt, data_sn=offset // 4096, buffer_offset=offset,
                         data=payload[offset : offset + 4096], final=last, status_present=last,
                         stat_sn=5, exp_cmd_sn=11, max_cmd_sn=50), 0.0)
    (done,) = s.take_completed()
    assert c.read_into is not None and bytes(c.read_into) == payload and c.received == 12288
    assert done.error is None


def test_data_in_outside_the_buffer_fails_the_connection() -> None:
    s = make()
    c = read_cmd(4096)
    s.submit(c, 0.0)
    s.receive(DataIn(itt=c.itt, buffer_offset=2048, data=bytes(4096), exp_cmd_sn=11,
                     max_cmd_sn=50), 0.0)
    assert s.failure is not None and "outside" in s.failure.reason
    assert s.failure.kind is FailureKind.PROTOCOL
    assert s.take_completed() == []


def test_placement_points_into_the_callers_buffer() -> None:
    s = make()
    c = read_cmd(65536)
    s.submit(c, 0.0)
    header = encode_header(DataIn(itt=c.itt, buffer_offset=16384, data=bytes(32768)))
    dest = s.placement(memoryview(header))
    assert dest is not None and len(dest) == 32768
    dest[:] = b"\xab" * 32768  # what the runtime's recv_into does
    s.receive(DataIn(itt=c.itt, buffer_offset=16384, data=dest, final=True, status_present=True,
                     exp_cmd_sn=11, max_cmd_sn=50), 0.0, placed=True)
    assert c.read_into is not None and bytes(c.read_into[16384:49152]) == b"\xab" * 32768
    assert bytes(c.read_into[:16384]) == bytes(16384)
    # Unknown ITT or out of bounds: no placement, the PDU comes the ordinary way.
    assert s.placement(memoryview(encode_header(DataIn(itt=999, data=bytes(16))))) is None


def test_check_condition_becomes_a_typed_exception() -> None:
    s = make()
    c = read_cmd()
    s.submit(c, 0.0)
    s.receive(ScsiResponse(itt=c.itt, status=0x02, stat_sn=5, exp_cmd_sn=11, max_cmd_sn=50,
                           data=sense_segment(lba_out_of_range().sense())), 0.0)
    (done,) = s.take_completed()
    assert isinstance(done.error, ScsiError) and done.error.key == SenseKey.ILLEGAL_REQUEST
    assert str(done.error) == "ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE (0x05/0x2100)"


@pytest.mark.parametrize("underflow", [False, True])
def test_a_scsi_response_taken_by_its_header_is_the_pdu_taken_whole(underflow: bool) -> None:
    """`answer` (the runtime's path for every SCSI Response: fields unpacked from the
    receive buffer) finishes a command exactly as `receive` of the decoded PDU does:
    status, sense, residual (only when U is set), StatSN and the window."""
    answers = [
        ScsiResponse(itt=0, status=0x02, stat_sn=5, exp_cmd_sn=11, max_cmd_sn=50,
                     residual_count=512, residual_underflow=underflow,
                     residual_overflow=not underflow,
                     data=sense_segment(lba_out_of_range().sense())),
        ScsiResponse(itt=0, status=0, stat_sn=6, exp_cmd_sn=12, max_cmd_sn=60,
                     residual_count=1024, residual_underflow=underflow),
        ScsiResponse(itt=0, response=1, stat_sn=7, exp_cmd_sn=13, max_cmd_sn=61),
    ]
    seen = []
    for whole in (True, False):
        s = make()
        cmds = [read_cmd() for _ in answers]
        for c, pdu in zip(cmds, answers, strict=True):
            s.submit(c, 0.0)
            pdu.itt = c.itt
            if whole:
                s.receive(pdu, 0.0)
            else:
                header = memoryview(b"\0" * 7 + encode_header(pdu))
                s.answer(header, 7, memoryview(bytes(pdu.data)), 0.0)
        done = s.take_completed()
        seen.append(([(c.status, c.residual, c.sense, repr(c.error)) for c in done],
                     s.exp_stat_sn, s.exp_cmd_sn, s.max_cmd_sn))
    assert seen[0] == seen[1]
    statuses, exp_stat_sn, _, max_cmd_sn = seen[0]
    assert [r for _, r, _, _ in statuses] == ([512, 1024, 0] if underflow else [0, 0, 0])
    assert statuses[0][2] and "TargetFailureError" in statuses[2][3]
    assert (exp_stat_sn, max_cmd_sn) == (8, 61)


def test_busy_status_and_reject_are_typed_too() -> None:
    s = make()
    a, b = read_cmd(), read_cmd()
    s.submit(a, 0.0)
    s.submit(b, 0.0)
    s.receive(ScsiResponse(itt=a.itt, status=0x08, exp_cmd_sn=11, max_cmd_sn=50), 0.0)
    header = encode_header(ScsiCommand(itt=b.itt, cdb=b.cdb))
    s.receive(Reject(reason=0x09, exp_cmd_sn=12, max_cmd_sn=50, data=header), 0.0)
    done = s.take_completed()
    assert isinstance(done[0].error, ScsiStatusError) and done[0].error.status == 0x08
    assert isinstance(done[1].error, CommandRejectedError) and done[1].error.reason == 0x09
    assert s.failure is None and s.outstanding == 0


def test_nop_in_ping_is_answered_with_its_ttt() -> None:
    s = make()
    s.receive(NopIn(itt=RESERVED_TAG, ttt=0x1234, lun=3, stat_sn=5, exp_cmd_sn=10,
                    max_cmd_sn=40, data=b"ping"), 0.0)
    (pdu,) = sent(s)
    assert isinstance(pdu, NopOut)
    assert (pdu.itt, pdu.ttt, pdu.lun, pdu.immediate, bytes(pdu.data)) == (
        RESERVED_TAG, 0x1234, 3, True, b"ping")
    assert pdu.cmd_sn == 10  # immediate: CmdSN not advanced
    assert s.exp_stat_sn == 5  # an unsolicited NOP-In does not advance StatSN


def test_keepalive_ping_and_its_timeout() -> None:
    s = make(timeouts=Timeouts(command=30, nop_interval=5, nop_timeout=2))
    assert s.get_timer() == 5
    s.handle_timer(4.0)
    assert sent(s) == []
    s.handle_timer(5.0)
    (ping,) = sent(s)
    assert isinstance(ping, NopOut) and ping.itt != RESERVED_TAG and ping.immediate
    assert s.get_timer() == 7.0
    # Answered in time: healthy, and the next ping is due 5 s after the answer.
    s.receive(NopIn(itt=ping.itt, stat_sn=5, exp_cmd_sn=10, max_cmd_sn=40), 6.0)
    s.handle_timer(7.0)
    assert s.failure is None and s.get_timer() == 11.0
    s.handle_timer(11.0)
    sent(s)
    s.handle_timer(13.0)
    assert s.failure is not None and "NOP-Out" in s.failure.reason
    assert s.failure.kind is FailureKind.PING


def test_a_timed_out_command_is_aborted_and_an_unanswered_abort_fails_the_connection() -> None:
    s = make(window=2, timeouts=Timeouts(command=3, nop_interval=100, nop_timeout=10, abort=2))
    cmds = [read_cmd() for _ in range(3)]
    for c in cmds:
        s.submit(c, 1.0)
    sent(s)
    assert s.get_timer() == 4.0
    s.handle_timer(3.9)
    assert s.failure is None and sent(s) == []
    s.handle_timer(4.0)
    aborts = sent(s)
    assert [type(p) for p in aborts] == [TaskMgmtRequest, TaskMgmtRequest]
    first = aborts[0]
    assert isinstance(first, TaskMgmtRequest)
    assert (first.function, first.referenced_task_tag, first.ref_cmd_sn, first.lun,
            first.immediate, first.cmd_sn) == (TmfFunction.ABORT_TASK, cmds[0].itt,
                                               cmds[0].cmd_sn, 1, True, s.cmd_sn)
    assert first.itt not in (c.itt for c in cmds) and s.failure is None
    assert s.get_timer() == 6.0  # the aborts' answers are due
    s.handle_timer(6.0)
    assert s.failure is not None and "nor its ABORT TASK in 2 s" in s.failure.reason
    assert s.failure.kind is FailureKind.TIMEOUT  # what the runtime reads as a timeout
    left = s.abandon()
    assert left == cmds and s.outstanding == 0 and s.queued == 0
    assert [c.attempts for c in left] == [1, 1, 0]


def test_an_aborted_command_is_handed_back_to_be_sent_again() -> None:
    s = make(timeouts=Timeouts(command=3, nop_interval=100, nop_timeout=10, abort=5))
    slow, fast = read_cmd(), read_cmd()
    s.submit(slow, 0.0)
    s.submit(fast, 0.0)
    sent(s)
    s.handle_timer(3.0)
    abort_slow, abort_fast = sent(s)
    assert isinstance(abort_slow, TaskMgmtRequest) and isinstance(abort_fast, TaskMgmtRequest)
    # `fast` answers before its abort is confirmed: it is done, the abort's answer is moot.
    s.receive(DataIn(itt=fast.itt, final=True, status_present=True, stat_sn=5, exp_cmd_sn=12,
                     max_cmd_sn=40, data=bytes(4096)), 3.5)
    s.receive(TaskMgmtResponse(response=TmfResponse.TASK_DOES_NOT_EXIST, itt=abort_fast.itt,
                               stat_sn=6, exp_cmd_sn=12, max_cmd_sn=40), 3.6)
    s.receive(TaskMgmtResponse(response=TmfResponse.FUNCTION_COMPLETE, itt=abort_slow.itt,
                               stat_sn=7, exp_cmd_sn=12, max_cmd_sn=40), 3.7)
    assert s.failure is None and s.outstanding == 0
    done = s.take_completed()
    assert done == [fast, slow] and fast.error is None
    assert isinstance(slow.error, CommandAbortedError) and "was aborted" in str(slow.error)
    # Sent again, it gets a new ITT and CmdSN and a fresh deadline.
    old_itt = slow.itt
    slow.error = None
    s.submit(slow, 4.0)
    (again,) = sent(s)
    assert isinstance(again, ScsiCommand) and again.itt != old_itt and slow.attempts == 2
    assert s.get_timer() == 7.0


def test_task_does_not_exist_waits_one_more_timeout_then_gives_the_connection_up() -> None:
    """tgtd answers "task does not exist" for a command it still completes afterwards:
    the command stays outstanding for one more timeout; a second silence drops the link."""
    s = make(timeouts=Timeouts(command=3, nop_interval=100, nop_timeout=10, abort=5))
    late, lost = read_cmd(), read_cmd()
    s.submit(late, 0.0)
    s.submit(lost, 0.0)
    sent(s)
    s.handle_timer(3.0)
    abort_late, abort_lost = sent(s)
    assert isinstance(abort_late, TaskMgmtRequest) and isinstance(abort_lost, TaskMgmtRequest)
    for abort, sn in ((abort_late, 5), (abort_lost, 6)):
        s.receive(TaskMgmtResponse(response=TmfResponse.TASK_DOES_NOT_EXIST, itt=abort.itt,
                                   stat_sn=sn, exp_cmd_sn=12, max_cmd_sn=40), 3.1)
    assert s.failure is None and s.outstanding == 2 and s.take_completed() == []
    assert s.get_timer() == 6.1  # one more timeout from the answer
    s.receive(DataIn(itt=late.itt, final=True, status_present=True, stat_sn=7,
                     exp_cmd_sn=12, max_cmd_sn=40, data=bytes(4096)), 4.0)
    assert s.take_completed() == [late] and late.error is None
    s.handle_timer(7.1)
    assert s.failure is not None and "does not know it" in s.failure.reason
    assert s.failure.kind is FailureKind.TIMEOUT


def test_a_refused_abort_fails_the_connection() -> None:
    s = make(timeouts=Timeouts(command=1, nop_interval=100, nop_timeout=10, abort=5))
    c = read_cmd()
    s.submit(c, 0.0)
    sent(s)
    s.handle_timer(1.0)
    (abort,) = sent(s)
    assert isinstance(abort, TaskMgmtRequest)
    s.receive(TaskMgmtResponse(response=TmfResponse.FUNCTION_REJECTED, itt=abort.itt,
                               stat_sn=5, exp_cmd_sn=11, max_cmd_sn=40), 1.1)
    assert s.failure is not None and "would not abort" in s.failure.reason
    assert s.failure.kind is FailureKind.PROTOCOL


def test_async_logout_request_fails_the_connection_for_reinstatement() -> None:
    s = make()
    s.receive(AsyncMessage(async_event=1, stat_sn=5, exp_cmd_sn=10, max_cmd_sn=40), 0.0)
    assert s.failure is not None and "LOGOUT_REQUEST" in s.failure.reason
    assert s.failure.kind is FailureKind.DROPPED


def test_unknown_itt_is_a_protocol_failure_not_an_exception() -> None:
    s = make()
    s.receive(ScsiResponse(itt=4242, exp_cmd_sn=10, max_cmd_sn=40), 0.0)
    assert s.failure is not None and "0x00001092" in s.failure.reason
    assert s.failure.kind is FailureKind.PROTOCOL


@pytest.mark.parametrize("write", [False, True])
def test_claim_covers_every_pdu_a_command_causes(write: bool) -> None:
    """What the device reserves (TASK/WIRE) is at least what the session sends and receives."""
    from earmark.memory.levels import (
        DATA_OUT_HEADER_BYTES,
        RESPONSE_HEADER_BYTES,
        TASK_DESCRIPTOR_BYTES,
    )
    from earmark.runtime.initiator_device import BlockDevice

    params = SessionParams(target_mrdsl=8192, initiator_mrdsl=8192, max_burst_length=20480,
                           first_burst_length=12288, immediate_data=True, initial_r2t=False)
    dev = BlockDevice("iscsi://127.0.0.1:1/iqn.x:y/1")
    dev.admission.negotiated(params)
    n = 100 * 1024
    _, task, wire = dev.admission.claim(write, n)
    s = InitiatorSession(params, cmd_sn=1, exp_cmd_sn=1, max_cmd_sn=9, exp_stat_sn=1, now=0)
    if write:
        c = Command(C.write_16(0, n // 512), write_data=memoryview(bytes(n)))
        s.submit(c, 0.0)
        pdus = sent(s)
        offset, r2ts = 12288, 0
        while offset < n:
            length = min(params.max_burst_length, n - offset)
            s.receive(R2T(itt=c.itt, ttt=r2ts, buffer_offset=offset,
                          desired_data_transfer_length=length, max_cmd_sn=9, exp_cmd_sn=2), 0)
            pdus += sent(s)
            offset += length
            r2ts += 1
        data_outs = sum(isinstance(p, DataOut) for p in pdus)
        assert task >= TASK_DESCRIPTOR_BYTES + data_outs * DATA_OUT_HEADER_BYTES
        received = r2ts + 1
    else:
        received = -(-n // params.initiator_mrdsl) + 1  # Data-In PDUs and the response
        assert task == TASK_DESCRIPTOR_BYTES
    assert wire >= received * RESPONSE_HEADER_BYTES + 254  # and the largest sense
