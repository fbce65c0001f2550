"""The engines' shared driver without sockets: PDUs and time in, bytes and decisions out."""

from __future__ import annotations

from earmark.initiator.driver import Driver
from earmark.initiator.errors import CommandTimeoutError, SessionLostError
from earmark.initiator.failure import ConnectionFailed, FailureKind
from earmark.initiator.session import Command, InitiatorSession, Timeouts
from earmark.iscsi.negotiation import SessionParams
from earmark.iscsi.opcodes import Opcode
from earmark.iscsi.pdu import LogoutResponse, ScsiResponse, WireBytes, sense_segment
from earmark.memory import Arena
from earmark.scsi import cdb as C
from earmark.scsi.sense import ScsiError, SenseKey

URL = "iscsi://127.0.0.1/iqn.2024-01.org.example:disk/0"


class FakeWire:
    """A connection as the driver sees it: what it wrote, and whether it aborted it."""

    def __init__(self) -> None:
        self.failed: str | None = None
        self.kind: FailureKind | None = None
        self.out: list[bytes] = []

    def write(self, pieces: list[WireBytes]) -> None:
        if pieces:
            self.out.append(b"".join(bytes(p) for p in pieces))

    def abort(self, reason: str, kind: FailureKind) -> None:
        self.failed, self.kind = reason, kind

    def opcodes(self) -> list[int]:
        """The first PDU's opcode of each write."""
        return [chunk[0] & 0x3F for chunk in self.out]


class Recorder(Driver[FakeWire]):
    def __init__(self, max_attempts: int = 2) -> None:
        super().__init__(URL, arena=Arena(1 << 20), initiator_name="iqn.2024-01.org.example:i",
                         timeouts=Timeouts(command=30, nop_interval=5, nop_timeout=2),
                         login_timeout=1.0, reconnect_timeout=1.0, max_attempts=max_attempts,
                         environ={}, digests=False)
        self.now = 0.0
        self.clock = lambda: self.now
        self.delivered: list[Command] = []
        self.dropped_runs: list[Command] = []
        self.logouts = 0

    def deliver(self, done: list[Command]) -> None:
        self.delivered.extend(done)

    def dropped(self, cmd: Command) -> None:
        self.dropped_runs.append(cmd)

    def logged_out_now(self) -> None:
        self.logouts += 1

    def connect(self) -> FakeWire:
        """A session as a login would leave it (CmdSN 10, window 32)."""
        wire = FakeWire()
        self.session = InitiatorSession(SessionParams(), cmd_sn=10, exp_cmd_sn=10,
                                        max_cmd_sn=41, exp_stat_sn=5, now=self.now,
                                        timeouts=self.timeouts)
        self.stream = wire
        return wire


def read_cmd() -> Command:
    return Command(C.read_16(0, 8), lun=0, read_into=memoryview(bytearray(4096)))


def good(cmd: Command, stat_sn: int = 5) -> ScsiResponse:
    return ScsiResponse(itt=cmd.itt, status=0, stat_sn=stat_sn, exp_cmd_sn=11, max_cmd_sn=50)


def test_an_answered_command_is_delivered_once_its_batch_is_parsed() -> None:
    drv = Recorder()
    wire = drv.connect()
    cmd = read_cmd()
    assert drv.session is not None
    drv.session.submit(cmd, 0.0)
    drv.pdu_received(good(cmd), False)
    assert drv.delivered == []  # delivered per batch, not per PDU
    drv.batch_done()
    assert drv.delivered == [cmd] and cmd.status == 0
    assert wire.opcodes() == [Opcode.SCSI_COMMAND]  # what the session had to send went out
    assert drv.idle


def test_a_unit_attention_goes_again_on_the_same_session_and_is_not_delivered() -> None:
    drv = Recorder()
    wire = drv.connect()
    cmd = read_cmd()
    assert drv.session is not None
    drv.session.submit(cmd, 0.0)
    wire.write(drv.session.data_to_send())
    ua = ScsiError(SenseKey.UNIT_ATTENTION, 0x29, 0x00).sense()
    drv.pdu_received(ScsiResponse(itt=cmd.itt, status=0x02, stat_sn=5, exp_cmd_sn=11,
                                  max_cmd_sn=50, data=sense_segment(ua)), False)
    drv.batch_done()
    assert drv.delivered == [] and drv.dropped_runs == [cmd]
    assert cmd.error is None and cmd.attempts == 2 and not drv.idle
    assert wire.opcodes() == [Opcode.SCSI_COMMAND, Opcode.SCSI_COMMAND]


def test_a_lost_connection_keeps_commands_with_attempts_and_fails_the_others() -> None:
    drv = Recorder(max_attempts=2)
    drv.connect()
    tired, fresh = read_cmd(), read_cmd()
    assert drv.session is not None
    drv.session.submit(tired, 0.0)
    tired.attempts = 2  # as if sent twice already
    drv.session.submit(fresh, 0.0)
    assert drv.lost(ConnectionFailed(FailureKind.TIMEOUT, "no answer"))
    assert drv.session is None and drv.stream is None
    assert drv.pending == [fresh] and drv.delivered == [tired]
    assert isinstance(tired.error, CommandTimeoutError)  # the failure's kind decides
    assert set(drv.dropped_runs) == {tired, fresh}
    # The next session: what waited goes out on it, counted as issued again.
    wire = drv.connect()
    drv.resume()
    assert drv.pending == [] and drv.reconnects == 1 and drv.reissued == 1
    assert wire.opcodes() == [Opcode.SCSI_COMMAND] and fresh.attempts == 2


def test_a_connection_lost_while_closing_fails_every_command_and_wants_no_session() -> None:
    drv = Recorder()
    drv.connect()
    cmd = read_cmd()
    assert drv.session is not None
    drv.session.submit(cmd, 0.0)
    drv.closing = True
    assert not drv.lost(ConnectionFailed(FailureKind.CLOSED, "reset"))
    assert drv.delivered == [cmd] and isinstance(cmd.error, SessionLostError)
    assert drv.pending == []


def test_the_timer_says_when_to_wake_and_aborts_a_connection_whose_ping_went_unanswered() -> None:
    drv = Recorder()
    wire = drv.connect()
    assert drv.timer(1.0) == 5.0  # the keepalive
    assert drv.timer(5.0) == 7.0 and wire.opcodes() == [Opcode.NOP_OUT]
    assert drv.timer(7.0) is None
    assert wire.kind is FailureKind.PING and wire.failed is not None


def test_reconnects_that_run_out_fail_what_waits_and_every_later_command() -> None:
    drv = Recorder()
    drv.connect()
    cmd = read_cmd()
    drv.pending.append(cmd)
    drv.lost(ConnectionFailed(FailureKind.CLOSED, "reset"))
    backoff = drv.backoff(0.0)
    backoff.failed(ConnectionError("refused"), 0.0)
    drv.unreachable(backoff)
    assert isinstance(drv.dead, SessionLostError) and "reset" in str(drv.dead)
    assert drv.delivered == [cmd] and cmd.error is drv.dead


def test_close_waits_for_answers_logs_out_then_fails_what_is_left() -> None:
    drv = Recorder()
    wire = drv.connect()
    cmd = read_cmd()
    assert drv.session is not None
    drv.session.submit(cmd, 0.0)
    assert not drv.idle
    drv.pdu_received(good(cmd), False)
    drv.batch_done()
    assert drv.idle
    assert drv.log_out() and drv.closing and not drv.logged_out
    assert wire.opcodes()[-1] == Opcode.LOGOUT_REQUEST
    drv.pdu_received(LogoutResponse(itt=2, stat_sn=6, exp_cmd_sn=11, max_cmd_sn=50), False)
    drv.batch_done()
    assert drv.logged_out and drv.logouts == 1
    late = read_cmd()
    drv.pending.append(late)
    drv.admission.receive_buffer_now(65536)
    drv.shut()
    assert drv.session is None and isinstance(late.error, SessionLostError)
    assert "device closed" in str(late.error)
    assert drv.arena.committed == 0  # the connection's receive buffer went back too


def test_no_logout_without_a_live_connection() -> None:
    drv = Recorder()
    wire = drv.connect()
    wire.failed = "gone"
    assert not drv.log_out() and drv.closing and wire.out == []
