"""The initiator's full feature phase on one connection, sans-I/O (RFC 7143).

:class:`InitiatorSession` takes decoded PDUs and the current time, and gives
back wire bytes (:meth:`data_to_send`), finished commands (:attr:`completed`)
and its next deadline (:meth:`get_timer`). It never touches a socket or a
clock, so tests drive it PDU by PDU and the simulator runs it unchanged.

What it decides, and why here:

* the command window: a command goes out only while CmdSN <= MaxCmdSN; the
  rest wait in arrival order, because the target advertises exactly the credit
  it has reserved for (the target admits only what it holds) and overrunning it
  is a protocol error;
* immediate and unsolicited data within FirstBurstLength, then one Data-Out
  sequence per R2T within MaxBurstLength, every PDU within the target's
  MaxRecvDataSegmentLength;
* Data-In lands in the caller's buffer at its BufferOffset; :meth:`placement`
  lets the runtime receive a large data segment straight there;
* status and sense become typed exceptions on the command;
* NOP-Out keepalive when the link is idle, answers to the target's NOP-In
  pings, and command timeouts: a command past its deadline is aborted (ABORT
  TASK, as Linux's SCSI error handler does first) and, once the target confirms,
  handed back finished with :class:`CommandAbortedError` for the runtime to send
  again; only when the abort itself goes unanswered is the connection marked
  failed (``failure``, a :class:`ConnectionFailed` of its kind): under ERL 0 the
  recovery is then a new connection, where
  :meth:`abandon` hands back every unanswered command to be issued again.
"""

from __future__ import annotations

import struct
from collections import deque

from earmark.iscsi.digest import header_digest
from earmark.iscsi.errors import ProtocolError
from earmark.iscsi.framing import frame, serialize, serialize_gather
from earmark.iscsi.negotiation import SessionParams
from earmark.iscsi.opcodes import AsyncEvent, LogoutReason, Opcode, TmfFunction, TmfResponse
from earmark.iscsi.pdu import (
    DATA_IN_BHS,
    R2T,
    RESERVED_TAG,
    SCSI_RESPONSE_BHS,
    AsyncMessage,
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
    TaskMgmtRequest,
    TaskMgmtResponse,
    WireBytes,
    bhs_lengths,
    parse_sense_segment,
    scsi_command_bhs,
)
from earmark.iscsi.serial import sn_le
from earmark.scsi.sense import ScsiStatus, SenseFormatError, parse_sense

from .errors import (
    CommandAbortedError,
    CommandRejectedError,
    InitiatorError,
    ScsiStatusError,
    TargetFailureError,
)
from .failure import ConnectionFailed, FailureKind

__all__ = ["Command", "InitiatorSession", "Timeouts"]

_MASK = 0xFFFFFFFF
_HALF = 1 << 31
_U32 = struct.Struct(">I")
_DATA_IN = int(Opcode.DATA_IN)
#: Data-In flags: status present (S), residual underflow (U; a SCSI Response's too).
_S = 0x01
_U = 0x02
#: What the target sends about one command: each lands in a receive buffer of its own.
_ANSWERS = frozenset((_DATA_IN, int(Opcode.R2T), int(Opcode.SCSI_RESPONSE)))


class Timeouts:
    """How long the session waits before it declares the connection dead."""

    __slots__ = ("abort", "command", "nop_interval", "nop_timeout")

    def __init__(
        self, command: float = 30.0, nop_interval: float = 5.0, nop_timeout: float = 10.0,
        abort: float = 10.0,
    ) -> None:
        #: A command with no status after this long is aborted (ABORT TASK).
        self.command = command
        #: Ping the target with NOP-Out after this long without receiving anything.
        self.nop_interval = nop_interval
        #: A ping without its NOP-In after this long fails the connection.
        self.nop_timeout = nop_timeout
        #: An ABORT TASK without its answer after this long fails the connection.
        self.abort = abort


class Command:
    """One SCSI command and everything the session knows about it.

    ``read_into`` receives Data-In; ``write_data`` is sent as immediate data and
    Data-Out (never copied: the PDUs carry slices of it). It may be a list of
    buffers, such as a run of page-cache pages, which are sent as they are (a
    data segment that spans two of them goes out as their pieces). A runtime
    that needs more per command (its future, its memory) subclasses it.
    """

    __slots__ = (
        "attempts",
        "cdb",
        "cmd_sn",
        "deadline",
        "error",
        "itt",
        "length",
        "lun",
        "read_into",
        "received",
        "residual",
        "sense",
        "status",
        "write_data",
    )

    def __init__(
        self,
        cdb: bytes,
        lun: int = 0,
        read_into: memoryview | None = None,
        write_data: memoryview | list[memoryview] | None = None,
    ) -> None:
        self.cdb = cdb
        self.lun = lun
        self.read_into = read_into
        #: Expected Data Transfer Length.
        if write_data is None:
            self.length = len(read_into) if read_into is not None else 0
        elif type(write_data) is list:
            if len(write_data) == 1:
                write_data = write_data[0]
                self.length = len(write_data)
            else:
                self.length = sum(map(len, write_data))
        else:
            self.length = len(write_data)
        self.write_data = write_data
        self.itt = RESERVED_TAG
        self.cmd_sn = 0
        self.deadline = 0.0
        self.attempts = 0
        self.received = 0
        self.residual = 0
        self.status: int | None = None
        self.sense = b""
        self.error: Exception | None = None


class InitiatorSession:
    """Full feature phase of one connection of a single-connection session."""

    __slots__ = (
        "_aborting",
        "_aborts",
        "_immediate_limit",
        "_last_rx",
        "_next_itt",
        "_out",
        "_ping_deadline",
        "_ping_itt",
        "_queue",
        "_tasks",
        "_unknown",
        "_unsolicited_limit",
        "cmd_sn",
        "completed",
        "exp_cmd_sn",
        "exp_stat_sn",
        "failure",
        "logout_response",
        "max_cmd_sn",
        "params",
        "timeouts",
    )

    def __init__(
        self,
        params: SessionParams,
        *,
        cmd_sn: int,
        exp_cmd_sn: int,
        max_cmd_sn: int,
        exp_stat_sn: int,
        now: float,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.params = params
        self.timeouts = timeouts or Timeouts()
        self.cmd_sn = cmd_sn
        self.exp_cmd_sn = exp_cmd_sn
        self.max_cmd_sn = max_cmd_sn
        self.exp_stat_sn = exp_stat_sn
        self._immediate_limit = (
            min(params.first_burst_length, params.target_mrdsl) if params.immediate_data else 0
        )
        self._unsolicited_limit = 0 if params.initial_r2t else params.first_burst_length
        self._tasks: dict[int, Command] = {}
        self._queue: deque[Command] = deque()
        self._out: list[WireBytes] = []
        self._next_itt = 1
        self._last_rx = now
        self._ping_itt = RESERVED_TAG
        self._ping_deadline = 0.0
        # ABORT TASKs sent: by their ITT, the command and when the answer is due; and
        # the ITTs of the commands being aborted (never reused until the answer).
        self._aborts: dict[int, tuple[Command, float]] = {}
        self._aborting: set[int] = set()
        # Commands whose abort the target answered "task does not exist".
        self._unknown: set[int] = set()
        #: Commands finished (successfully or not) since the runtime last drained this.
        self.completed: list[Command] = []
        #: Why the connection must be dropped; None while it is healthy.
        self.failure: ConnectionFailed | None = None
        self.logout_response: LogoutResponse | None = None

    # ------------------------------------------------------------ inspection

    @property
    def outstanding(self) -> int:
        """Commands issued and not yet answered."""
        return len(self._tasks)

    @property
    def queued(self) -> int:
        """Commands waiting for the target to open the command window."""
        return len(self._queue)

    def unanswered(self) -> list[Command]:
        """Commands issued and waiting for their status, then those waiting for the window."""
        return [*self._tasks.values(), *self._queue]

    def take_completed(self) -> list[Command]:
        """Commands finished since the last call, in the order their status came."""
        done = self.completed
        self.completed = []
        return done

    def data_to_send(self) -> list[WireBytes]:
        """Everything to write since the last call, in order, for ``writelines``
        (an empty list, not to be kept, when there is nothing: asked after every batch)."""
        out = self._out
        if out:
            self._out = []
        return out

    # ------------------------------------------------------------ commands

    def submit(self, cmd: Command, now: float) -> bool:
        """Issue ``cmd`` now if the window allows, else queue it (FIFO).

        True when nothing else was outstanding: no answer is coming whose batch
        would carry this command out, so the runtime should write it now.
        """
        cmd.itt = self._allocate_itt()
        idle = not self._tasks
        # sn_le(cmd_sn, max_cmd_sn) written out: this runs for every command.
        if self._queue or (self.max_cmd_sn - self.cmd_sn) & _MASK >= _HALF:
            self._queue.append(cmd)
        else:
            self._issue(cmd, now)
        return idle

    def abandon(self) -> list[Command]:
        """The connection is gone: every unanswered command, oldest CmdSN first.

        Under ERL 0 none of them can be recovered on this session; the caller
        issues them again on a new one (a write is idempotent; an answered one
        is never in this list).
        """
        left = sorted(self._tasks.values(), key=lambda c: (c.cmd_sn - self.cmd_sn) & _MASK)
        left.extend(self._queue)
        self._tasks.clear()
        self._queue.clear()
        self._aborts.clear()
        self._aborting.clear()
        self._unknown.clear()
        for cmd in left:
            cmd.received = 0
            cmd.itt = RESERVED_TAG
        return left

    def logout(self) -> None:
        """Send Logout (close the session); the answer lands in ``logout_response``."""
        itt = self._allocate_itt()
        self._send(LogoutRequest(reason=LogoutReason.CLOSE_SESSION, itt=itt,
                                 cmd_sn=self.cmd_sn, exp_stat_sn=self.exp_stat_sn,
                                 immediate=True))

    def _allocate_itt(self) -> int:
        itt = self._next_itt
        tasks = self._tasks
        # ITTs of aborts under way are not reused (every aborting command has its ABORT
        # TASK in _aborts): looked at only while there are any, not for every command.
        held = bool(self._aborts or self._unknown)
        while itt in tasks or itt == self._ping_itt or (held and (
                itt in self._aborts or itt in self._aborting or itt in self._unknown)):
            itt = itt % 0xFFFFFFFE + 1
        self._next_itt = itt % 0xFFFFFFFE + 1
        return itt

    def _issue(self, cmd: Command, now: float) -> None:
        data = cmd.write_data
        length = cmd.length
        sn = cmd.cmd_sn = self.cmd_sn
        self.cmd_sn = (sn + 1) & _MASK
        cmd.deadline = now + self.timeouts.command
        cmd.attempts += 1
        itt = cmd.itt
        self._tasks[itt] = cmd
        cdb = cmd.cdb
        read = cmd.read_into is not None
        short = len(cdb) <= 16  # no AHS: the BHS packed at once, from the fields at hand
        if data is None:
            if short:  # and no data segment: the BHS is all there is
                header = scsi_command_bhs(0x01, 0xC1 if read else 0x81, 0, cmd.lun, itt,
                                          length, sn, self.exp_stat_sn, cdb)
                if self.params.header_digest:
                    header += header_digest(header)
                self._out.append(header)
            else:
                self._send(ScsiCommand(
                    itt=itt, cdb=cdb, expected_data_transfer_length=length, cmd_sn=sn,
                    exp_stat_sn=self.exp_stat_sn, lun=cmd.lun, read=read, final=True))
            return
        immediate = min(self._immediate_limit, length)
        unsolicited = min(self._unsolicited_limit, length)
        final = unsolicited <= immediate
        segment = _segment(data, 0, immediate)
        if short and not isinstance(segment, list):  # one buffer's slice, framed as it is
            header = scsi_command_bhs(
                0x01, (0xA1 if final else 0x21) | (0x40 if read else 0), immediate, cmd.lun,
                itt, length, sn, self.exp_stat_sn, cdb)
            self._out.extend(frame(header, segment, self.params.header_digest,
                                   self.params.data_digest))
        else:
            self._send_with(ScsiCommand(
                itt=itt, cdb=cdb, expected_data_transfer_length=length, cmd_sn=sn,
                exp_stat_sn=self.exp_stat_sn, lun=cmd.lun, read=read, write=True,
                final=final), segment)
        if not final:
            self._data_out(cmd, RESERVED_TAG, immediate, unsolicited - immediate)

    def _data_out(self, cmd: Command, ttt: int, offset: int, length: int) -> None:
        """One Data-Out sequence: ``length`` bytes from ``offset``, F on the last PDU."""
        data = cmd.write_data
        assert data is not None
        step = self.params.target_mrdsl
        end = offset + length
        data_sn = 0
        out = self._out
        hd, dd = self.params.header_digest, self.params.data_digest
        while offset < end:
            n = min(step, end - offset)
            pdu = DataOut(itt=cmd.itt, ttt=ttt, exp_stat_sn=self.exp_stat_sn, data_sn=data_sn,
                          buffer_offset=offset, final=offset + n == end, lun=cmd.lun)
            segment = _segment(data, offset, n)
            if isinstance(segment, list):
                out.extend(serialize_gather(pdu, segment, hd, dd))
            else:
                pdu.data = segment
                out.extend(serialize(pdu, hd, dd))
            offset += n
            data_sn += 1

    def _send(self, pdu: Pdu) -> None:
        self._out.extend(serialize(pdu, self.params.header_digest, self.params.data_digest))

    def _send_with(self, pdu: ScsiCommand, segment: memoryview | list[memoryview]) -> None:
        """``pdu`` with ``segment`` as its (immediate) data."""
        hd, dd = self.params.header_digest, self.params.data_digest
        if isinstance(segment, list):
            self._out.extend(serialize_gather(pdu, segment, hd, dd))
        else:
            pdu.data = segment
            self._out.extend(serialize(pdu, hd, dd))

    def _pump(self, now: float) -> None:
        queue = self._queue
        while queue and sn_le(self.cmd_sn, self.max_cmd_sn):
            self._issue(queue.popleft(), now)

    # ------------------------------------------------------------ receiving

    def placement(self, bhs: memoryview) -> memoryview | None:
        """Where the data segment of the Data-In with this BHS belongs, if anywhere.

        Lets the runtime read a large segment straight into the caller's buffer;
        None (unknown task, out of bounds) means "hand me the PDU as usual" and
        :meth:`receive` then reports the error.
        """
        if bhs[0] & 0x3F != _DATA_IN:
            return None
        cmd = self._tasks.get(_U32.unpack_from(bhs, 16)[0])
        if cmd is None or cmd.read_into is None:
            return None
        offset: int = _U32.unpack_from(bhs, 40)[0]
        dsl = bhs_lengths(bhs)[1]
        if offset + dsl > len(cmd.read_into):
            return None
        return cmd.read_into[offset : offset + dsl]

    def answering(self, bhs: memoryview) -> Command | None:
        """The outstanding command the PDU with this BHS answers (R2T, Data-In, SCSI
        Response), if any.

        Those are the PDUs whose receive buffers a command's memory claim counts;
        the runtime asks before it parses one, so that under the policies without
        reservations it can allocate that buffer as a real receive path does, on
        arrival, and charge it to the command. Anything else (NOP-In, Async,
        Reject, an unknown ITT) is parsed in the connection's own buffer.
        """
        if bhs[0] & 0x3F not in _ANSWERS:
            return None
        return self._tasks.get(_U32.unpack_from(bhs, 16)[0])

    def answer(self, header: WireBytes, at: int, data: WireBytes, now: float) -> None:
        """Take one Data-In (its data segment not placed) or SCSI Response whose BHS is
        ``header[at : at + 48]`` and whose data segment is ``data``: what :meth:`receive`
        does with a :class:`DataIn` or a :class:`ScsiResponse`.

        Every read is answered by at least one Data-In, at 4 KiB by exactly one that
        carries the status too, and every write by a SCSI Response; unpacking their
        fields here, instead of building and dispatching a PDU object, is a good part
        of what a small read or write costs.
        """
        self._last_rx = now
        try:
            if header[at] & 0x3F == _DATA_IN:
                (_, flags, status, _, _, itt, _, stat_sn, exp_cmd_sn, max_cmd_sn, _, offset,
                 residual) = DATA_IN_BHS.unpack_from(header, at)
                self._data_in(itt, offset, data, False, flags, status, stat_sn, exp_cmd_sn,
                              max_cmd_sn, residual)
            else:
                (_, flags, response, status, _, itt, _, stat_sn, exp_cmd_sn, max_cmd_sn, _, _,
                 residual) = SCSI_RESPONSE_BHS.unpack_from(header, at)
                self._status(itt, response, status, stat_sn, exp_cmd_sn, max_cmd_sn,
                             residual if flags & _U else 0, data)
        except ProtocolError as exc:
            self._fail(FailureKind.PROTOCOL, exc.reason)
        if self._queue:
            self._pump(now)

    def receive(self, pdu: Pdu, now: float, placed: bool = False) -> None:
        """Take one PDU from the target. ``placed``: its data is already in place.

        A target that breaks the protocol sets ``failure`` (the runtime drops
        the connection and reissues); nothing the target sends raises here.
        """
        self._last_rx = now
        try:
            if type(pdu) is DataIn:
                self._data_in(
                    pdu.itt, pdu.buffer_offset, pdu.data, placed,
                    (_S if pdu.status_present else 0) | (_U if pdu.residual_underflow else 0),
                    pdu.status, pdu.stat_sn, pdu.exp_cmd_sn, pdu.max_cmd_sn, pdu.residual_count,
                )
            elif type(pdu) is ScsiResponse:
                self._status(pdu.itt, pdu.response, pdu.status, pdu.stat_sn, pdu.exp_cmd_sn,
                             pdu.max_cmd_sn,
                             pdu.residual_count if pdu.residual_underflow else 0, pdu.data)
            elif type(pdu) is R2T:
                self._r2t(pdu)
            elif type(pdu) is NopIn:
                self._nop_in(pdu)
            elif type(pdu) is TaskMgmtResponse:
                self._tmf_response(pdu)
            elif type(pdu) is LogoutResponse:
                self._window(pdu.exp_cmd_sn, pdu.max_cmd_sn)
                self._stat(pdu.stat_sn)
                self.logout_response = pdu
            elif type(pdu) is AsyncMessage:
                self._async(pdu)
            elif type(pdu) is Reject:
                self._reject(pdu)
            else:
                raise ProtocolError(f"unexpected {pdu.OPCODE.name} in full feature phase")
        except ProtocolError as exc:
            self._fail(FailureKind.PROTOCOL, exc.reason)
        if self._queue:
            self._pump(now)

    def _window(self, exp_cmd_sn: int, max_cmd_sn: int) -> None:
        # RFC 7143 §4.2.2.1: ignore both when MaxCmdSN < ExpCmdSN - 1 (serial).
        # Serial comparisons written out (sn_le): this runs for every PDU received.
        if (max_cmd_sn - exp_cmd_sn + 1) & _MASK >= _HALF:
            return
        if (exp_cmd_sn - self.exp_cmd_sn) & _MASK < _HALF:
            self.exp_cmd_sn = exp_cmd_sn
        if (max_cmd_sn - self.max_cmd_sn) & _MASK < _HALF:
            self.max_cmd_sn = max_cmd_sn

    def _stat(self, stat_sn: int) -> None:
        nxt = (stat_sn + 1) & _MASK
        if (nxt - self.exp_stat_sn) & _MASK < _HALF:  # sn_le(exp_stat_sn, nxt)
            self.exp_stat_sn = nxt

    def _task(self, itt: int, what: str) -> Command:
        cmd = self._tasks.get(itt)
        if cmd is None:
            raise ProtocolError(f"{what} for ITT 0x{itt:08x}, which has no command outstanding")
        return cmd

    def _data_in(
        self, itt: int, offset: int, data: WireBytes, placed: bool, flags: int, status: int,
        stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int, residual: int,
    ) -> None:
        """One Data-In by its fields (``flags``: the BHS flags byte; S and U are read)."""
        self._window(exp_cmd_sn, max_cmd_sn)
        cmd = self._tasks.get(itt)
        if cmd is None:
            cmd = self._task(itt, "Data-In")  # raises, in words
        n = len(data)
        if n:
            dest = cmd.read_into
            if dest is None or offset + n > len(dest):
                raise ProtocolError(
                    f"Data-In of {n} B at offset {offset} for ITT 0x{itt:08x} outside the "
                    f"{cmd.length} B the command expects"
                )
            if not placed:
                dest[offset : offset + n] = data
            cmd.received += n
        if flags & _S:
            self._stat(stat_sn)
            cmd.residual = residual if flags & _U else 0
            if status:
                self._finish(cmd, status, b"")
            else:  # GOOD, the usual end of a read: what _finish does with it
                del self._tasks[itt]
                cmd.status = 0
                self.completed.append(cmd)

    def _status(self, itt: int, response: int, status: int, stat_sn: int, exp_cmd_sn: int,
                max_cmd_sn: int, residual: int, data: WireBytes) -> None:
        """One SCSI Response by its fields (``residual``: its count if underflow, else 0;
        ``data``: its sense segment, if any)."""
        self._window(exp_cmd_sn, max_cmd_sn)
        self._stat(stat_sn)
        cmd = self._tasks.get(itt)
        if cmd is None:
            cmd = self._task(itt, "SCSI Response")  # raises, in words
        cmd.residual = residual
        if not (response or status or data):  # GOOD, the usual end of a write: _finish's
            del self._tasks[itt]
            cmd.status = 0
            self.completed.append(cmd)
            return
        if response != 0:
            del self._tasks[cmd.itt]
            cmd.error = TargetFailureError(
                f"target failure (iSCSI response 0x{response:02x}) on CDB opcode "
                f"0x{cmd.cdb[0]:02x}"
            )
            self.completed.append(cmd)
            return
        self._finish(cmd, status, parse_sense_segment(data) if data else b"")

    def _finish(self, cmd: Command, status: int, sense: bytes) -> None:
        del self._tasks[cmd.itt]
        cmd.status = status
        if status == ScsiStatus.GOOD:
            pass
        elif status == ScsiStatus.CHECK_CONDITION:
            cmd.sense = sense
            try:
                cmd.error = parse_sense(cmd.sense).error()
            except SenseFormatError as exc:
                cmd.error = InitiatorError(f"CHECK CONDITION with unreadable sense data: {exc}")
        else:
            cmd.error = ScsiStatusError(status)
        self.completed.append(cmd)

    def _r2t(self, pdu: R2T) -> None:
        self._window(pdu.exp_cmd_sn, pdu.max_cmd_sn)
        cmd = self._task(pdu.itt, "R2T")
        length = pdu.desired_data_transfer_length
        if cmd.write_data is None or pdu.buffer_offset + length > cmd.length:
            raise ProtocolError(
                f"R2T for {length} B at offset {pdu.buffer_offset} of ITT 0x{pdu.itt:08x} "
                f"outside the {cmd.length} B it writes"
            )
        if length == 0 or length > self.params.max_burst_length:
            raise ProtocolError(
                f"R2T asks for {length} B; MaxBurstLength is {self.params.max_burst_length}"
            )
        self._data_out(cmd, pdu.ttt, pdu.buffer_offset, length)

    def _tmf_response(self, pdu: TaskMgmtResponse) -> None:
        self._window(pdu.exp_cmd_sn, pdu.max_cmd_sn)
        self._stat(pdu.stat_sn)
        entry = self._aborts.pop(pdu.itt, None)
        if entry is None:
            raise ProtocolError(f"Task Management Response for ITT 0x{pdu.itt:08x}, "
                                "which we did not send")
        cmd = entry[0]
        self._aborting.discard(cmd.itt)
        if self._tasks.get(cmd.itt) is not cmd:  # its status came first: it is done
            return
        if pdu.response == TmfResponse.TASK_DOES_NOT_EXIST:
            # Not known to the target (RFC 7143 11.5.1 c), yet possibly still on its way
            # (tgtd answers so and then completes the command): wait one more timeout
            # for its status, then give the connection up rather than guess.
            if cmd.itt in self._unknown:
                raise ProtocolError(f"the target does not know timed-out ITT 0x{cmd.itt:08x}")
            self._unknown.add(cmd.itt)
            del self._tasks[cmd.itt]
            cmd.deadline = self._last_rx + self.timeouts.command
            self._tasks[cmd.itt] = cmd  # last again: deadlines stay in order
            return
        if pdu.response != TmfResponse.FUNCTION_COMPLETE:
            raise ProtocolError(f"the target would not abort timed-out ITT 0x{cmd.itt:08x} "
                                f"(task management response {pdu.response})")
        del self._tasks[cmd.itt]
        self._unknown.discard(cmd.itt)
        cmd.error = CommandAbortedError(
            f"command (CDB opcode 0x{cmd.cdb[0]:02x}) got no answer in "
            f"{self.timeouts.command:g} s and was aborted")
        self.completed.append(cmd)

    def _nop_in(self, pdu: NopIn) -> None:
        self._window(pdu.exp_cmd_sn, pdu.max_cmd_sn)
        if pdu.itt != RESERVED_TAG:
            # The answer to our ping; StatSN advances only for these (§11.19.4).
            self._stat(pdu.stat_sn)
            if pdu.itt == self._ping_itt:
                self._ping_itt = RESERVED_TAG
            return
        if pdu.ttt != RESERVED_TAG:
            # The target pings us: echo its TTT, LUN and data at once.
            self._send(NopOut(itt=RESERVED_TAG, ttt=pdu.ttt, cmd_sn=self.cmd_sn,
                              exp_stat_sn=self.exp_stat_sn, lun=pdu.lun, immediate=True,
                              data=bytes(pdu.data)))

    def _async(self, pdu: AsyncMessage) -> None:
        self._window(pdu.exp_cmd_sn, pdu.max_cmd_sn)
        self._stat(pdu.stat_sn)
        if pdu.async_event in (AsyncEvent.LOGOUT_REQUEST, AsyncEvent.CONNECTION_DROP,
                               AsyncEvent.SESSION_DROP):
            # ERL 0: whichever the target wants, the session goes and comes back.
            self._fail(FailureKind.DROPPED,
                       f"target sent asynchronous event {AsyncEvent(pdu.async_event).name}")

    def _reject(self, pdu: Reject) -> None:
        self._window(pdu.exp_cmd_sn, pdu.max_cmd_sn)
        self._stat(pdu.stat_sn)
        header = pdu.data
        if len(header) < 48:
            raise ProtocolError(f"Reject (reason 0x{pdu.reason:02x}) without the rejected header")
        itt = _U32.unpack_from(header, 16)[0]
        cmd = self._tasks.get(itt)
        if cmd is None or header[0] & 0x3F != Opcode.SCSI_COMMAND:
            raise ProtocolError(f"target rejected a PDU (reason 0x{pdu.reason:02x})")
        del self._tasks[itt]
        cmd.error = CommandRejectedError(pdu.reason)
        self.completed.append(cmd)

    # ------------------------------------------------------------ time

    def get_timer(self) -> float | None:
        """The next moment :meth:`handle_timer` has something to do."""
        if self._ping_itt != RESERVED_TAG:
            deadline = self._ping_deadline
        else:
            deadline = self._last_rx + self.timeouts.nop_interval
        for cmd in self._tasks.values():  # oldest first: dicts keep insertion order
            if cmd.itt not in self._aborting:
                deadline = min(deadline, cmd.deadline)
                break
        for _, due in self._aborts.values():
            deadline = min(deadline, due)
        return deadline

    def handle_timer(self, now: float) -> None:
        if self._unknown:  # forget those that have finished since
            self._unknown = {itt for itt in self._unknown if itt in self._tasks}
        for cmd in list(self._tasks.values()):
            if cmd.deadline > now:
                break
            if cmd.itt in self._unknown:
                self._fail(FailureKind.TIMEOUT,
                           f"command ITT 0x{cmd.itt:08x} (CDB opcode 0x{cmd.cdb[0]:02x}) got no "
                           f"answer, and the target said it does not know it")
            elif cmd.itt not in self._aborting and self.failure is None:
                self._abort_task(cmd, now)
        for cmd, due in self._aborts.values():
            if due <= now:
                self._fail(FailureKind.TIMEOUT,
                           f"command ITT 0x{cmd.itt:08x} (CDB opcode 0x{cmd.cdb[0]:02x}) got no "
                           f"answer in {self.timeouts.command:g} s, nor its ABORT TASK in "
                           f"{self.timeouts.abort:g} s")
        if self._ping_itt != RESERVED_TAG:
            if now >= self._ping_deadline:
                self._fail(FailureKind.PING, "target did not answer a NOP-Out ping in "
                                             f"{self.timeouts.nop_timeout:g} s")
        elif now >= self._last_rx + self.timeouts.nop_interval:
            self._ping_itt = self._allocate_itt()
            self._ping_deadline = now + self.timeouts.nop_timeout
            self._send(NopOut(itt=self._ping_itt, ttt=RESERVED_TAG, cmd_sn=self.cmd_sn,
                              exp_stat_sn=self.exp_stat_sn, immediate=True))

    def _fail(self, kind: FailureKind, reason: str) -> None:
        """The first failure is the one reported: later ones follow from it."""
        if self.failure is None:
            self.failure = ConnectionFailed(kind, reason)

    def _abort_task(self, cmd: Command, now: float) -> None:
        """ABORT TASK for a command past its deadline (immediate: it takes no CmdSN)."""
        itt = self._allocate_itt()
        self._aborting.add(cmd.itt)
        self._aborts[itt] = (cmd, now + self.timeouts.abort)
        self._send(TaskMgmtRequest(
            function=TmfFunction.ABORT_TASK, itt=itt, referenced_task_tag=cmd.itt,
            cmd_sn=self.cmd_sn, exp_stat_sn=self.exp_stat_sn, ref_cmd_sn=cmd.cmd_sn,
            lun=cmd.lun, immediate=True,
        ))


def _segment(
    data: memoryview | list[memoryview], offset: int, n: int
) -> memoryview | list[memoryview]:
    """Bytes [offset, offset + n) of a command's data as slices of the caller's
    buffers: one view when they lie in one buffer, else the pieces in order."""
    if isinstance(data, memoryview):
        return data[offset : offset + n]
    pieces: list[memoryview] = []
    end = offset + n
    at = 0
    for piece in data:
        size = len(piece)
        if at + size > offset:
            pieces.append(piece[max(0, offset - at) : min(size, end - at)])
        at += size
        if at >= end:
            break
    return pieces[0] if len(pieces) == 1 else pieces
