"""The target's full-feature phase of one session (one connection, ERL 0), sans-I/O.

PDUs and the time go in; wire bytes, backing I/O requests and memory requests
come out (`data_to_send`, `next_event`), and their outcomes come back (`io_done`,
`allocated`). No socket, clock, thread or arena wait is touched here, so the
runtime, the simulator and the tests all drive the same object.

Admission by reservation (the target half of docs/architecture.md's one idea): every
command slot the session advertises through MaxCmdSN is a reservation it already holds
(SLOT plus one burst-sized BUFFER). A command arriving in the window therefore finds
its memory waiting: its unsolicited data lands in the slot's buffer, R2Ts are sent
only for that buffer, Data-In is read into it chunk by chunk. The window grows only
when the runtime hands the session another granted reservation (`add_slot`), and a
finished command's slot is kept for the next one unless the session holds more than
its share (`slot_target`), in which case it goes back to the arena.

Under `--policy none` the window is fixed and buffers are allocated on demand,
burst by burst, held until the command completes: the reassembly deadlock.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from earmark.iscsi.discovery import TextResponder
from earmark.iscsi.errors import ProtocolError
from earmark.iscsi.framing import frame, serialize
from earmark.iscsi.negotiation import SessionParams
from earmark.iscsi.opcodes import LogoutReason, Opcode, RejectReason, TmfFunction, TmfResponse
from earmark.iscsi.pdu import (
    BHS_LENGTH,
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
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TextResponse,
    bhs_lengths,
    data_in_bhs,
    encode_header,
    scsi_response_bhs,
    sense_segment,
)
from earmark.iscsi.serial import sn_diff
from earmark.memory import Buffer, Reservation
from earmark.memory.levels import TargetLevel
from earmark.scsi import sbc
from earmark.scsi.plans import (
    CompareAndWritePlan,
    CopyPlan,
    LbaStatusPlan,
    Outcome,
    Plan,
    ReadPlan,
    Reply,
    WritePlan,
    WriteSamePlan,
)
from earmark.scsi.reservations import Nexus
from earmark.scsi.sense import ScsiError, ScsiStatus, SenseKey, protocol_crc_error
from earmark.target.counters import PortalCounters
from earmark.target.events import AllocRequest, CloseConnection, Event, IoRequest
from earmark.target.segments import cut, fill
from earmark.target.task import Sequence, Task
from earmark.target.unit import LogicalUnit

log = logging.getLogger(__name__)

_BUFFER = TargetLevel.BUFFER
# Enum members looked up once: a class attribute lookup on an Enum costs about ten
# times a global's, and these are read for every command.
_GOOD = ScsiStatus.GOOD
_DATA_OUT = Opcode.DATA_OUT
_U32 = struct.Struct(">I")
#: Plans whose whole Data-Out must be in one window (they act on all of it at once).
_WHOLE = (CompareAndWritePlan, WriteSamePlan)
_MOD = 1 << 32
#: Commands a pending unit attention does not answer (SAM-5 5.14): INQUIRY, REPORT LUNS
#: and REQUEST SENSE.
_NO_ATTENTION = frozenset((0x12, 0xA0, 0x03))
#: What every session on a LUN hears after a LOGICAL UNIT RESET: BUS DEVICE RESET
#: FUNCTION OCCURRED (SAM-5 7.7), on every path to it (multipath initiators wait for it).
_LUN_RESET_ATTENTION = ScsiError(SenseKey.UNIT_ATTENTION, 0x29, 0x03)
#: Data-In flags of a read's last PDU: F (final) and S (status present).
_FINAL_STATUS = 0x81
#: SCSI Response flags: F, always (RFC 7143 11.4.1).
_FINAL = 0x80
#: The units of an I/O request that names none (all but a copy's): one read-only empty
#: mapping, not a new dict from the field's default factory (a call and an allocation
#: for every command).
_NO_UNITS: Mapping[int, LogicalUnit] = MappingProxyType({})


class AdmissionPolicy(Enum):
    """How the target admits commands (the host's memory disciplines are
    :class:`earmark.host.policy.Policy`): ``reserve`` advertises credit only for
    slots it holds; ``none`` accepts the whole window and allocates on demand."""

    RESERVE = "reserve"
    NONE = "none"


@dataclass(slots=True, frozen=True)
class SessionConfig:
    """What a session may use: `buffer_bytes` per slot, `window` commands under `none`."""

    policy: AdmissionPolicy = AdmissionPolicy.RESERVE
    buffer_bytes: int = 256 * 1024
    window: int = 32
    #: Ping an idle initiator with NOP-In after this many seconds; None: never.
    nop_interval: float | None = 10.0
    nop_timeout: float = 30.0


DEFAULT_CONFIG = SessionConfig()

UNSENT_HIGH = 1 << 20
"""Unsent bytes a connection's transport may hold before it pauses writing: the runtime
then stops reading commands, and reads keep their answers in the arena meanwhile."""


class TargetSession:
    """Full-feature phase of one session on one connection."""

    __slots__ = (
        "_discovery",
        "_events",
        "_free",
        "_held",
        "_held_answers",
        "_held_tmf",
        "_last_rx",
        "_next_ttt",
        "_out",
        "_peers",
        "_ping",
        "_reserve",
        "_slot_buf",
        "blocked",
        "closed",
        "config",
        "counters",
        "data_in_room",
        "exp_cmd_sn",
        "luns",
        "max_cmd_sn",
        "name",
        "nexus",
        "params",
        "slot_target",
        "stat_sn",
        "tasks",
        "text",
        "units",
    )

    def __init__(
        self,
        params: SessionParams,
        units: Mapping[int, LogicalUnit],
        *,
        exp_cmd_sn: int,
        stat_sn: int,
        slots: list[Reservation],
        config: SessionConfig = DEFAULT_CONFIG,
        name: str = "session",
        now: float = 0.0,
        text: TextResponder | None = None,
        nexus: Nexus | None = None,
        counters: PortalCounters | None = None,
    ) -> None:
        self.params = params
        #: The portal's, where a NOP timeout is counted (a session of its own in tests).
        self.counters = counters or PortalCounters()
        #: A discovery session answers every SCSI command with an error; asked per command.
        self._discovery = params.session_type == "Discovery"
        self.units = dict(units)
        self.luns = sorted(self.units)
        #: What EXTENDED COPY may name: this session's units, as SCSI sees them.
        self._peers = {n: u.disk for n, u in self.units.items()}
        self.config = config
        #: Admission by reservation (else `--policy none`), asked for every command.
        self._reserve = config.policy is AdmissionPolicy.RESERVE
        self.name = name
        self.text = text
        #: Who the initiator is, for the logical units' reservations.
        self.nexus = nexus or Nexus(name, 0)
        self.tasks: dict[int, Task] = {}
        self._free: list[Reservation | None]
        if self._reserve:
            self._free = list(slots)
        else:
            self._free = [None] * config.window
        self._held = len(self._free)
        #: Each held slot's buffer, drawn once when the slot comes in and used by command
        #: after command: a draw and return per command costs more in the arena's buddy
        #: books (split and coalesce) than the rest of a cached 4 KiB read.
        self._slot_buf: dict[Reservation, Buffer] = {
            s: s.take(_BUFFER, config.buffer_bytes) for s in slots
        } if self._reserve else {}
        #: How many slots the session should hold; the runtime adjusts it to a fair share.
        self.slot_target = self._held
        self.exp_cmd_sn = exp_cmd_sn
        self.max_cmd_sn = (exp_cmd_sn - 1 + len(self._free)) % _MOD
        #: The StatSN the next status will carry.
        self.stat_sn = stat_sn
        self._out: list[bytes | memoryview] = []
        self._events: deque[Event] = deque()
        # Task management answers held until the backing I/O of every task they ended
        # has returned: (response, ITT, those tasks, close the connection after).
        self._held_tmf: list[tuple[int, int, list[Task], bool]] = []
        self._next_ttt = 1
        self._last_rx = now
        self._ping: tuple[int, float] | None = None
        #: A blocking allocation the reader must wait for before reading on (`none`).
        self.blocked: AllocRequest | None = None
        #: Bytes of Data-In the transport takes before it holds more than `UNSENT_HIGH`
        #: unsent (the initiator reads slower than we answer): each answer queued uses
        #: its share, so a batch of answers stops where the transport would pause; the
        #: runtime renews it from what the transport holds (`release_data_in`) and sets
        #: it to 0 when the transport pauses. With no room a read whose I/O is done
        #: keeps its answer in its slot's buffer, in the arena (`_held_answers`),
        #: instead of handing it to the transport, which would copy it out of the arena.
        self.data_in_room = UNSENT_HIGH
        self._held_answers: deque[tuple[IoRequest, bytes]] = deque()
        self.closed = False
        for unit in self.units.values():
            unit.join(self, self.nexus)

    # ------------------------------------------------------------------ outputs

    def data_to_send(self) -> list[bytes | memoryview]:
        """Wire pieces for `writelines`. They may point into command buffers, so the
        runtime sends (or copies) them before it starts the next event."""
        out = self._out
        self._out = []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def slot_demand(self) -> int:
        """Slots the session would take now if the runtime reserved them."""
        if not self._reserve:
            return 0
        return max(0, self.slot_target - self._held)

    def add_slot(self, slot: Reservation) -> None:
        """A granted reservation for one more command: the window opens by one."""
        self._held += 1
        self._slot_buf[slot] = slot.take(_BUFFER, self.config.buffer_bytes)
        self._return_slot(slot)

    def close(self) -> list[Reservation]:
        """The connection is gone: forget every task; hand back the slots to release.

        Buffers of tasks whose I/O is still running are freed by `io_done`. The I_T
        nexus is lost with it: RESERVE(6) reservations it held end (SPC-2 5.5.1).
        """
        for task in list(self.tasks.values()):
            self._abort(task)
        for unit in self.units.values():
            unit.reservations.nexus_lost(self.nexus)
            unit.copies.nexus_lost(self.nexus)
            unit.sessions.discard(self)
            unit.attention.pop(self, None)
        self.closed = True
        slots = [s for s in self._free if s is not None]
        self._free = []
        for slot in slots:
            self._slot_buf.pop(slot).put_back()
        return slots

    # ------------------------------------------------------------------- timers

    def timer(self) -> float | None:
        """When `handle_timer` wants to run next (None: nothing pending)."""
        return self.timer_for(None)

    def timer_for(self, armed: float | None) -> float | None:
        """The deadline the runtime's one timer should have, given the one it has armed.

        The deadline moves on with every PDU received; a timer armed for an earlier
        moment is kept (firing early is harmless: `handle_timer` checks the time and
        the runtime asks again), so a busy connection does not make a timer per PDU.
        The answer is `armed` itself when that timer will do.
        """
        if self._ping is not None:
            when = self._ping[1] + self.config.nop_timeout
        elif self.config.nop_interval is None:
            return None
        else:
            when = self._last_rx + self.config.nop_interval
        return armed if armed is not None and armed <= when else when

    def handle_timer(self, now: float) -> None:
        if self._ping is not None:
            if now >= self._ping[1] + self.config.nop_timeout:
                self.counters.nop_timeouts += 1
                self._events.append(CloseConnection(
                    f"{self.name}: no answer to NOP-In ping in {self.config.nop_timeout:g} s",
                    error=True,
                ))
            return
        if self.config.nop_interval is not None and now >= self._last_rx + self.config.nop_interval:
            ttt = self._ttt()
            self._ping = (ttt, now)
            self._send(NopIn(RESERVED_TAG, ttt, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn))

    # ------------------------------------------------------------------- inputs

    def placement(self, bhs: memoryview | bytes) -> list[memoryview] | None:
        """Where the data segment of the PDU with this BHS should be read to, if into a
        command's buffer (so Data-Out lands where it belongs with no copy), else None."""
        if bhs[0] & 0x3F != _DATA_OUT:
            return None
        _, dsl = bhs_lengths(bhs)
        itt = _U32.unpack_from(bhs, 16)[0]
        ttt = _U32.unpack_from(bhs, 20)[0]
        offset = _U32.unpack_from(bhs, 40)[0]
        task = self.tasks.get(itt)
        if task is None or task.aborted or not dsl:
            return None
        seq = self._sequence(task, ttt)
        if seq is None or seq.next_offset != offset or offset + dsl > seq.end:
            return None
        if offset < task.start or offset + dsl > min(task.end, task.xfer):
            return None
        views = self._views(task, offset, offset + dsl)
        return views if sum(len(v) for v in views) == dsl else None

    def receive(self, pdu: Pdu, now: float, *, placed: bool = False) -> None:
        """One PDU from the initiator; `placed` if its data was read where `placement` said."""
        self._last_rx = now
        try:
            if isinstance(pdu, ScsiCommand):
                self._command(pdu)
            elif isinstance(pdu, DataOut):
                self._data_out(pdu, placed)
            elif isinstance(pdu, NopOut):
                self._nop_out(pdu)
            elif isinstance(pdu, TaskMgmtRequest):
                self._tmf(pdu)
            elif isinstance(pdu, LogoutRequest):
                self._logout(pdu)
            elif isinstance(pdu, TextRequest):
                self._text(pdu)
            else:
                # SNACK at ERL 0, a login in full feature, or a target opcode.
                reason = (RejectReason.PROTOCOL_ERROR if pdu.OPCODE < 0x20
                          else RejectReason.COMMAND_NOT_SUPPORTED)
                self.reject(_header_of(pdu), reason)
        except ProtocolError as exc:
            self.reject(_header_of(pdu), RejectReason.PROTOCOL_ERROR)
            self._events.append(CloseConnection(f"{self.name}: {exc.reason}", error=True))

    def reject(self, header: bytes | memoryview, reason: RejectReason) -> None:
        """Send a Reject carrying the offending header (also for PDUs that did not decode)."""
        self._send(Reject(int(reason), self._stat(), self.exp_cmd_sn, self.max_cmd_sn, 0,
                          bytes(header[:BHS_LENGTH])))

    def io_done(self, io: IoRequest, sense: bytes) -> None:
        """The runtime finished `io`; `sense` is empty on success."""
        task = io.task
        if self.data_in_room <= 0 and task.reading and not task.aborted:
            # Still in flight: its buffer holds the answer until `release_data_in`.
            self._held_answers.append((io, sense))
            return
        task.in_flight = False
        if isinstance(io.plan, CopyPlan):
            io.unit.copies.finish(self.nexus, io.plan, ok=not sense)
        if task.aborted:
            self._release(task)
            if self._held_tmf:
                self._tmf_io_returned(task)
            return
        if sense:
            moved = task.start if task.reading else 0
            self._respond(task, ScsiStatus.CHECK_CONDITION, sense, moved=moved)
            return
        if task.reading:
            self._send_data_in(task, io.views, last=task.end >= task.xfer)
        if task.end >= task.xfer:
            if not task.reading:
                self._respond(task, _GOOD, b"", moved=task.xfer)
            return
        self._next_window(task)

    @property
    def answers_held(self) -> int:
        """Reads whose answers wait for `release_data_in`."""
        return len(self._held_answers)

    def release_data_in(self, unsent: int) -> None:
        """The transport holds `unsent` bytes and has not paused: renew the room from
        that, and answer the reads held meanwhile, oldest first, while there is room
        (the last may pass it by one answer, as a read answered unheld does)."""
        self.data_in_room = UNSENT_HIGH + 1 - unsent  # it pauses past UNSENT_HIGH
        held = self._held_answers
        while held and self.data_in_room > 0:
            self.io_done(*held.popleft())

    def allocated(self, req: AllocRequest, buffer: Buffer) -> None:
        """`--policy none`: the buffer asked for by `req` was granted."""
        task = req.task
        if req is self.blocked:
            self.blocked = None
        if task.aborted:
            buffer.free()
            if isinstance(task.plan, CopyPlan) and task.unit is not None:
                task.unit.copies.finish(self.nexus, task.plan, ok=False)
            return
        task.pieces.append((req.start, buffer))
        task.pieces.sort(key=lambda p: p[0])
        if isinstance(task.plan, CopyPlan):
            self._copy_io(task, task.plan, buffer)
            return
        if task.reading:
            self._start_io(task)
            return
        if task.stash is not None:
            self._take_data(task, 0, task.stash, placed=False)
            task.stash = None
        for ttt, seq in task.r2ts.items():
            if not seq.sent and seq.next_offset == req.start:
                seq.sent = True
                self._send_r2t(task, ttt, seq)
        self._maybe_write(task)

    # ------------------------------------------------------------- CmdSN window

    def _advance(self, cmd_sn: int, immediate: bool, uses_slot: bool) -> bool:
        """Take a non-immediate PDU's CmdSN; False if it must be ignored (RFC 7143 §4.2.2.1).
        A command (`uses_slot`) must also be in the window: not past MaxCmdSN."""
        if immediate:
            return True
        if cmd_sn != self.exp_cmd_sn or (uses_slot and sn_diff(cmd_sn, self.max_cmd_sn) > 0):
            # Out of the window, or a gap: one connection delivers in order, so a gap
            # means the command before it was dropped. Ignore it, as the RFC says.
            log.debug("%s: ignoring CmdSN %d (ExpCmdSN %d, MaxCmdSN %d)", self.name, cmd_sn,
                      self.exp_cmd_sn, self.max_cmd_sn)
            return False
        self.exp_cmd_sn = (self.exp_cmd_sn + 1) % _MOD
        if not uses_slot:
            # Took a place in the window but no slot: give the place back at once.
            self.max_cmd_sn = (self.max_cmd_sn + 1) % _MOD
        return True

    def _stat(self) -> int:
        sn = self.stat_sn
        self.stat_sn = (sn + 1) % _MOD
        return sn

    def _ttt(self) -> int:
        ttt = self._next_ttt
        self._next_ttt = ttt + 1 if ttt + 1 < RESERVED_TAG else 1
        return ttt

    def _send(self, pdu: Pdu) -> None:
        self._out.extend(serialize(pdu, self.params.header_digest, self.params.data_digest))

    # ----------------------------------------------------------------- commands

    def _command(self, pdu: ScsiCommand) -> None:
        # Every command passes here: fields are read once into locals.
        cmd_sn, immediate, itt, cdb = pdu.cmd_sn, pdu.immediate, pdu.itt, pdu.cdb
        # Outside the window (closed: ExpCmdSN too), or a gap: ignored, ExpCmdSN stays.
        if not self._advance(cmd_sn, immediate, True):
            return
        tasks = self.tasks
        if itt in tasks or itt == RESERVED_TAG:
            raise ProtocolError(f"SCSI Command reuses ITT 0x{itt:08x} of a task in flight")
        if pdu.data and not self.params.immediate_data:
            raise ProtocolError("immediate data sent though ImmediateData=No")
        free = self._free
        if immediate and len(free) - sn_diff(self.max_cmd_sn, self.exp_cmd_sn) - 1 <= 0:
            self.reject(_header_of(pdu), RejectReason.IMMEDIATE_COMMAND_REJECT)
            return
        if not free:
            raise ProtocolError("command in the window but no slot: window accounting broken")
        unit = self.units.get(pdu.lun)
        task = Task(itt, cmd_sn, pdu.lun, unit, cdb, free.pop())
        tasks[itt] = task
        if self._discovery:
            self._reply(task, pdu, Reply.error(ScsiError(SenseKey.ILLEGAL_REQUEST, 0x25, 0)))
            return
        if unit is None:
            self._reply(task, pdu, sbc.execute_without_lun(cdb, self.luns))
            return
        unit.counters.commands[cdb[0]] += 1
        if unit.attention and self in unit.attention and cdb[0] not in _NO_ATTENTION:
            self._reply(task, pdu, Reply.error(unit.heard(self, self.nexus)))
            return
        disk = unit.disk
        if cdb[0] in sbc.PARAMETER_LISTS:  # those execute once their list is here
            list_len = sbc.data_out_length(cdb, disk)
            if list_len:
                self._write_command(task, pdu, None, list_len)
                return
        # Only commands with Data-Out check the EDTL (WRITE SAME, COMPARE AND WRITE):
        # theirs is the write direction's.
        outcome = sbc.execute(cdb, disk, luns=self.luns,
                              edtl=pdu.expected_data_transfer_length if pdu.write else 0,
                              nexus=self.nexus, reservations=unit.reservations,
                              copies=unit.copies)
        # One look at the CDB: a read's or a write's plan says how much Data-Out comes.
        if isinstance(outcome, ReadPlan):
            out_len = 0
        elif isinstance(outcome, WritePlan):
            out_len = outcome.nblocks * disk.block_size
        else:
            out_len = sbc.data_out_length(cdb, disk)
        if out_len:
            self._write_command(task, pdu, outcome, out_len)
            return
        if isinstance(outcome, Reply):
            self._reply(task, pdu, outcome)
            return
        # A read moves its blocks (the plan has them: no second look at the CDB).
        in_len = (outcome.nblocks * disk.block_size if isinstance(outcome, ReadPlan)
                  else outcome.length if isinstance(outcome, LbaStatusPlan) else 0)
        task.plan = outcome
        if in_len:
            task.reading = True
            task.edtl = pdu.expected_data_transfer_length if pdu.read else 0
            task.spdtl = in_len
            task.xfer = xfer = min(task.edtl, in_len)
            if not xfer:
                self._respond(task, _GOOD, b"", moved=0)
                return
            if self._reserve and xfer <= self.config.buffer_bytes:
                self._whole(task, outcome, None)
                return
        else:
            # A plan with no data (SYNCHRONIZE CACHE, UNMAP-free WRITE SAME NDOB, ...).
            task.edtl = pdu.expected_data_transfer_length
        self._first_window(task)

    def _reply(self, task: Task, pdu: ScsiCommand, reply: Reply) -> None:
        """A finished answer: Data-In from the reply's bytes, then status."""
        if reply.status != _GOOD or not reply.data:
            task.edtl = pdu.expected_data_transfer_length
            self._respond(task, ScsiStatus(reply.status), reply.sense, moved=0)
            return
        task.reading = True
        task.edtl = pdu.expected_data_transfer_length if pdu.read else 0
        task.spdtl = len(reply.data)
        task.xfer = min(task.edtl, task.spdtl)
        if task.xfer:
            self._send_data_in(task, [memoryview(reply.data)[: task.xfer]], last=True)
        else:
            self._respond(task, _GOOD, b"", moved=0)

    def _write_command(self, task: Task, pdu: ScsiCommand, outcome: Outcome | None,
                       out_len: int) -> None:
        """`outcome` is what the CDB does (None for a parameter list: it executes once
        the list is here)."""
        edtl = pdu.expected_data_transfer_length if pdu.write else 0
        task.edtl, task.spdtl = edtl, out_len
        unsolicited = len(pdu.data) if pdu.final else min(self.params.first_burst_length, edtl)
        if len(pdu.data) > unsolicited or (not pdu.final and self.params.initial_r2t):
            raise ProtocolError(
                f"{len(pdu.data)} B of immediate data and F={int(pdu.final)} break "
                f"FirstBurstLength={self.params.first_burst_length} or InitialR2T=Yes"
            )
        if unsolicited > len(pdu.data):
            task.unsolicited = Sequence(len(pdu.data), unsolicited)
        if isinstance(outcome, Reply):
            self._respond(task, ScsiStatus(outcome.status), outcome.sense, moved=0)
            return
        task.plan = outcome
        # EDTL below the CDB's length: write only what the initiator sends and report
        # the overflow (FCP-4 9.4.2 a); above it: take the CDB's length, underflow.
        task.xfer = min(edtl, out_len)
        task.next_r2t = unsolicited
        if not task.xfer:
            self._respond(task, _GOOD, b"", moved=0)
            return
        if (len(pdu.data) == task.xfer <= self.config.buffer_bytes and task.unsolicited is None
                and task.slot is not None and outcome is not None):
            self._whole(task, outcome, pdu.data)
            return
        self._first_window(task)
        if pdu.data:
            if task.pieces:
                self._take_data(task, 0, memoryview(pdu.data), placed=False)
            else:
                task.stash = memoryview(pdu.data)
        if task.next_r2t < task.end:  # not all of the window came with the command
            self._issue_r2ts(task)
        self._maybe_write(task)

    # ------------------------------------------------------------------ windows

    def _first_window(self, task: Task) -> None:
        """Set up the buffer for the transfer's first window (start reading into it)."""
        if not self._reserve:
            task.start, task.end = 0, task.xfer
            if not task.xfer:
                self._start_io(task)
            elif task.reading:
                self._alloc(task, 0, task.xfer, blocking=False)
            elif task.unsolicited is not None or task.next_r2t:
                # The unsolicited burst needs its buffer before the reader can go on.
                first = min(task.next_r2t, task.xfer)
                self._alloc(task, 0, first, blocking=True)
            return
        cap = self.config.buffer_bytes
        if task.plan is not None and isinstance(task.plan, _WHOLE) and task.xfer > cap:
            raise ProtocolError(f"{task.xfer} B of Data-Out do not fit one {cap} B buffer")
        size = min(task.xfer, cap)
        task.start, task.end = 0, size
        if size:
            slot = task.slot
            assert slot is not None
            task.pieces = [(0, self._slot_buf[slot])]
        if task.reading or not task.xfer:
            self._start_io(task)

    def _whole(self, task: Task, plan: Plan, data: bytes | memoryview | None) -> None:
        """The usual read or write: its transfer fits the slot's buffer (the caller
        checked), so its one window is all of it and goes to the store at once, a write's
        ``data`` (all of it came with the command) copied in first: what `_first_window`
        and `_start_io` do for a read, and with `_take_data` and `_maybe_write` for a
        write, in one step."""
        assert task.slot is not None and task.unit is not None
        task.end = task.xfer
        task.pieces = [(0, self._slot_buf[task.slot])]
        views = self._views(task, 0, task.xfer)
        if data is not None:
            task.got = task.xfer
            fill(views, data)
        task.in_flight = True
        self._events.append(IoRequest(task, task.unit, plan, 0, views, True, _NO_UNITS))

    def _next_window(self, task: Task) -> None:
        size = min(task.xfer - task.end, self.config.buffer_bytes)
        task.start, task.end, task.got = task.end, task.end + size, 0
        buf = task.pieces[0][1]
        task.pieces = [(task.start, buf)]
        if task.reading:
            self._start_io(task)
        else:
            self._issue_r2ts(task)

    def _views(self, task: Task, start: int, end: int) -> list[memoryview]:
        pieces = task.pieces
        if len(pieces) == 1:
            base, buf = pieces[0]
            segments = buf.segments
            if len(segments) == 1 and base <= start and end <= base + buf.nbytes:
                return [segments[0][start - base : end - base]]  # the usual case: one run
        out: list[memoryview] = []
        for base, buf in task.pieces:
            lo, hi = max(start, base), min(end, base + buf.nbytes)
            if lo < hi:
                out.extend(cut(buf.segments, lo - base, hi - base))
        return out

    def _start_io(self, task: Task) -> None:
        unit, plan = task.unit, task.plan
        assert unit is not None
        views = self._views(task, task.start, task.end)
        if plan is None:  # a parameter list command (UNMAP, ...): its list is here now
            outcome = sbc.execute(task.cdb, unit.disk, luns=self.luns,
                                  data_out=b"".join(views), edtl=task.edtl,
                                  nexus=self.nexus, reservations=unit.reservations,
                                  peers=self._peers, copies=unit.copies)
            if isinstance(outcome, Reply):
                self._respond(task, ScsiStatus(outcome.status), outcome.sense, moved=task.xfer)
                return
            task.plan = plan = outcome
            if isinstance(plan, CopyPlan):
                self._start_copy(task, plan)
                return
        task.in_flight = True
        self._events.append(IoRequest(task, unit, plan, task.start, views,
                                      task.end >= task.xfer, _NO_UNITS))

    def _start_copy(self, task: Task, plan: CopyPlan) -> None:
        """EXTENDED COPY moves its blocks through one buffer reused chunk by chunk: the
        slot's whole buffer under reserve (the parameter list in it is parsed already),
        one buffer-sized allocation under none, as a target that allocates does."""
        if not self._reserve:
            self._alloc(task, task.xfer, self.config.buffer_bytes, blocking=False)
            return
        assert task.slot is not None
        self._copy_io(task, plan, self._slot_buf[task.slot])

    def _copy_io(self, task: Task, plan: CopyPlan, buffer: Buffer) -> None:
        assert task.unit is not None
        task.in_flight = True
        views = cut(buffer.segments, 0, buffer.nbytes)
        self._events.append(IoRequest(task, task.unit, plan, task.start, views, last=True,
                                      units=self.units))

    def _alloc(self, task: Task, start: int, nbytes: int, *, blocking: bool) -> None:
        req = AllocRequest(task, start, nbytes, blocking)
        if blocking:
            self.blocked = req
        self._events.append(req)

    # ----------------------------------------------------------------- Data-Out

    def _sequence(self, task: Task, ttt: int) -> Sequence | None:
        if ttt == RESERVED_TAG:
            return task.unsolicited
        return task.r2ts.get(ttt)

    def _data_out(self, pdu: DataOut, placed: bool) -> None:
        task = self.tasks.get(pdu.itt)
        if task is None or task.aborted:
            return  # its command was answered or aborted already: the data is moot
        seq = self._sequence(task, pdu.ttt)
        if seq is None or not seq.sent:
            raise ProtocolError(
                f"Data-Out for ITT 0x{pdu.itt:08x} with unknown TTT 0x{pdu.ttt:08x}"
            )
        n = len(pdu.data)
        if pdu.data_sn != seq.next_data_sn:
            # A DataSN out of order means an earlier Data-Out was lost to a digest
            # error (RFC 7143 §7.3). Recovering it takes a recovery R2T, which is
            # ERL 1; at ERL 0 the command ends with PROTOCOL SERVICE CRC ERROR (§7.8)
            # and the session goes on. Anything still coming for it is dropped.
            log.info("%s: ITT 0x%08x: Data-Out DataSN %d, expected %d", self.name, pdu.itt,
                     pdu.data_sn, seq.next_data_sn)
            self._respond(task, ScsiStatus.CHECK_CONDITION, protocol_crc_error().sense(), 0)
            task.aborted = True
            return
        if pdu.buffer_offset != seq.next_offset or pdu.buffer_offset + n > seq.end:
            raise ProtocolError(
                f"Data-Out of {n} B at offset {pdu.buffer_offset} outside the expected "
                f"[{seq.next_offset}, {seq.end})"
            )
        seq.next_data_sn += 1
        seq.next_offset += n
        done = seq.next_offset == seq.end
        if pdu.final != done:
            raise ProtocolError(f"Data-Out F bit {int(pdu.final)} at offset {seq.next_offset} "
                                f"of a sequence ending at {seq.end}")
        if done:
            if pdu.ttt == RESERVED_TAG:
                task.unsolicited = None
            else:
                del task.r2ts[pdu.ttt]
        self._take_data(task, pdu.buffer_offset, pdu.data, placed)
        if done and pdu.ttt != RESERVED_TAG:
            self._issue_r2ts(task)
        self._maybe_write(task)

    def _take_data(self, task: Task, offset: int, data: bytes | memoryview, placed: bool) -> None:
        """Count (and unless already placed, copy) the part of the data in the window."""
        lo, hi = max(offset, task.start), min(offset + len(data), task.end)
        if lo >= hi:
            return
        if not placed:
            fill(self._views(task, lo, hi), memoryview(data)[lo - offset : hi - offset])
        task.got += hi - lo

    def _issue_r2ts(self, task: Task) -> None:
        limit = self.params.max_outstanding_r2t
        burst = self.params.max_burst_length
        while len(task.r2ts) < limit and task.next_r2t < task.end:
            offset = max(task.next_r2t, task.start)
            length = min(burst, task.end - offset)
            task.next_r2t = offset + length
            ttt = self._ttt()
            if not self._reserve:
                task.r2ts[ttt] = Sequence(offset, offset + length, sent=False)
                self._alloc(task, offset, length, blocking=False)
            else:
                seq = Sequence(offset, offset + length)
                task.r2ts[ttt] = seq
                self._send_r2t(task, ttt, seq)

    def _send_r2t(self, task: Task, ttt: int, seq: Sequence) -> None:
        self._send(R2T(task.itt, ttt, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn,
                       task.r2t_sn, seq.next_offset, seq.end - seq.next_offset, task.lun))
        task.r2t_sn += 1

    def _maybe_write(self, task: Task) -> None:
        if task.in_flight or task.reading or task.got < task.end - task.start:
            return
        if task.unsolicited is not None and task.start == 0:
            return  # unsolicited data beyond the transfer is still coming: take it first
        self._start_io(task)

    # ------------------------------------------------------------------ Data-In

    def _send_data_in(self, task: Task, views: list[memoryview], last: bool) -> None:
        """Data-In PDUs for `views`, at most MaxRecvDataSegmentLength each and never
        across a run of the buffer; the last carries the status when it can."""
        mrdsl = self.params.initiator_mrdsl
        if last and len(views) == 1 and len(views[0]) <= mrdsl:
            self._final_data_in(task, task.start, views[0])  # the usual small read
            return
        burst = self.params.max_burst_length
        offset = task.start
        pieces: list[memoryview] = []
        for view in views:
            for pos in range(0, len(view), mrdsl):
                pieces.append(view[pos : pos + mrdsl])
        for i, piece in enumerate(pieces):
            end = offset + len(piece)
            if last and i == len(pieces) - 1:
                self._final_data_in(task, offset, piece)
                return
            self.data_in_room -= len(piece)
            self._send(DataIn(
                task.itt, RESERVED_TAG, task.data_sn, offset, 0, self.exp_cmd_sn,
                self.max_cmd_sn, 0, 0, end % burst == 0, False, False, False, False,
                task.lun, piece,
            ))
            task.data_sn += 1
            offset = end

    def _final_data_in(self, task: Task, offset: int, piece: memoryview) -> None:
        """The command's last Data-In, with its status (phase collapse). Slot back
        first, so it carries the reopened window; the views stay valid until sent
        (the runtime sends before the next event)."""
        self._finish(task)
        self.data_in_room -= len(piece)
        over, under, residual = _residual(task.edtl, task.spdtl, task.xfer)
        # Packed directly, not through a DataIn object: this is the reply to every read.
        flags = _FINAL_STATUS | (0x04 if over else 0) | (0x02 if under else 0)
        params = self.params
        self._out += frame(
            data_in_bhs(flags, _GOOD, len(piece), task.lun, task.itt, RESERVED_TAG,
                        self._stat(), self.exp_cmd_sn, self.max_cmd_sn, task.data_sn, offset,
                        residual),
            piece, params.header_digest, params.data_digest)
        task.data_sn += 1

    # ------------------------------------------------------------------- status

    def _respond(self, task: Task, status: ScsiStatus, sense: bytes, moved: int) -> None:
        del self.tasks[task.itt]  # what _finish does, without its call: every write's answer
        self._release(task)
        if status and task.unit is not None:
            task.unit.counters.failure(task.cdb[0], status)
        edtl = task.edtl
        # All that was expected moved, as SCSI said it would: no residual, and no call to
        # _residual to say so.
        over, under, residual = (False, False, 0) if edtl == task.spdtl == moved \
            else _residual(edtl, task.spdtl, moved)
        if sense:
            self._send(ScsiResponse(
                task.itt, int(status), 0, self._stat(), self.exp_cmd_sn, self.max_cmd_sn,
                task.data_sn + task.r2t_sn, residual, 0, 0, over, under, False, False,
                sense_segment(sense),
            ))
            return
        # Packed directly, not through a ScsiResponse: this is the reply to every write.
        params = self.params
        self._out += frame(
            scsi_response_bhs(_FINAL | (0x04 if over else 0) | (0x02 if under else 0), 0,
                              status, 0, task.itt, 0, self._stat(), self.exp_cmd_sn,
                              self.max_cmd_sn, task.data_sn + task.r2t_sn, 0, residual),
            b"", params.header_digest, params.data_digest)

    def _finish(self, task: Task) -> None:
        del self.tasks[task.itt]
        self._release(task)

    def _release(self, task: Task) -> None:
        """Return the task's buffers and its place in the window, once; not while its
        I/O runs (the thread is using the buffer): `io_done` calls again."""
        if task.in_flight or task.released:
            return
        task.released = True
        for _, buf in task.pieces:
            if buf.reservation is None:  # `--policy none`: allocated for this command
                buf.free()
        task.pieces = []  # under `reserve`, the slot's buffer: it stays with the slot
        slot, task.slot = task.slot, None
        self._return_slot(slot)

    def _return_slot(self, slot: Reservation | None) -> None:
        if slot is not None and (self.closed or self._held > max(1, self.slot_target)):
            self._held -= 1
            self._slot_buf.pop(slot).put_back()
            slot.release()
            return
        self._free.append(slot)
        self.max_cmd_sn = (self.max_cmd_sn + 1) % _MOD

    # ------------------------------------------------------- NOP, TMF, logout, text

    def _nop_out(self, pdu: NopOut) -> None:
        if pdu.ttt != RESERVED_TAG:
            if self._ping is not None and pdu.ttt == self._ping[0]:
                self._ping = None
            return
        if pdu.itt == RESERVED_TAG:
            if not pdu.immediate:
                raise ProtocolError("NOP-Out with ITT ffffffff must be immediate")
            return
        if not self._advance(pdu.cmd_sn, pdu.immediate, False):
            return
        self._send(NopIn(pdu.itt, RESERVED_TAG, self._stat(), self.exp_cmd_sn, self.max_cmd_sn,
                         pdu.lun, bytes(pdu.data)))

    def _tmf(self, pdu: TaskMgmtRequest) -> None:
        if not self._advance(pdu.cmd_sn, pdu.immediate, False):
            return
        fn = pdu.function
        response = TmfResponse.FUNCTION_COMPLETE
        ended: list[Task] = []
        if fn == TmfFunction.ABORT_TASK:
            task = self.tasks.get(pdu.referenced_task_tag)
            if task is not None:
                ended.append(task)
            elif sn_diff(pdu.ref_cmd_sn, self.exp_cmd_sn) >= 0:
                # Never received: nothing to abort, and it will be ignored if it comes.
                response = TmfResponse.TASK_DOES_NOT_EXIST
        elif fn in (TmfFunction.ABORT_TASK_SET, TmfFunction.CLEAR_TASK_SET,
                    TmfFunction.LOGICAL_UNIT_RESET):
            if pdu.lun not in self.units:
                response = TmfResponse.LUN_DOES_NOT_EXIST
            else:
                ended = [t for t in self.tasks.values() if t.lun == pdu.lun]
                if fn == TmfFunction.LOGICAL_UNIT_RESET:
                    self.units[pdu.lun].reservations.reset()
                    self.units[pdu.lun].tell_all(_LUN_RESET_ATTENTION)
        elif fn in (TmfFunction.TARGET_WARM_RESET, TmfFunction.TARGET_COLD_RESET):
            ended = list(self.tasks.values())
            for unit in self.units.values():
                unit.reservations.reset()
        elif fn == TmfFunction.TASK_REASSIGN:
            response = TmfResponse.TASK_REASSIGNMENT_NOT_SUPPORTED
        elif fn == TmfFunction.CLEAR_ACA:
            response = TmfResponse.FUNCTION_NOT_SUPPORTED
        else:
            response = TmfResponse.FUNCTION_REJECTED
        for task in ended:
            self._abort(task)
            if task.unit is not None:
                task.unit.counters.aborted += 1
        # The answer says the tasks are over (SAM-5 7.1): a write still in the backing's
        # hands is not, and must not land after what the initiator sends next.
        running = [t for t in ended if t.in_flight]
        close = fn == TmfFunction.TARGET_COLD_RESET
        if running:
            self._held_tmf.append((int(response), pdu.itt, running, close))
        else:
            self._answer_tmf(int(response), pdu.itt, close)

    def _answer_tmf(self, response: int, itt: int, close: bool) -> None:
        self._send(TaskMgmtResponse(response, itt, self._stat(), self.exp_cmd_sn,
                                    self.max_cmd_sn))
        if close:
            self._events.append(CloseConnection(f"{self.name}: target cold reset", error=False))

    def _tmf_io_returned(self, task: Task) -> None:
        """An ended task's I/O is back: answer the task management that waited for it."""
        held = []
        for response, itt, running, close in self._held_tmf:
            running = [t for t in running if t is not task]
            if running:
                held.append((response, itt, running, close))
            else:
                self._answer_tmf(response, itt, close)
        self._held_tmf = held

    def _abort(self, task: Task) -> None:
        """End a task without status (RFC 7143 §4.2.3.4): its slot comes back once any
        I/O it has running returns."""
        task.aborted = True
        self.tasks.pop(task.itt, None)
        if self.blocked is not None and self.blocked.task is task:
            self.blocked = None
        for held in [h for h in self._held_answers if h[0].task is task]:
            self._held_answers.remove(held)
            self.io_done(*held)  # its I/O is over and its answer moot: its slot comes back
        self._release(task)

    def _logout(self, pdu: LogoutRequest) -> None:
        if not self._advance(pdu.cmd_sn, pdu.immediate, False):
            return
        if pdu.reason == LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY:
            response, close = 2, False  # connection recovery needs ERL 2
        else:
            response, close = 0, True
        for task in list(self.tasks.values()):
            if close:
                self._abort(task)
        self._send(LogoutResponse(response, pdu.itt, self._stat(), self.exp_cmd_sn,
                                  self.max_cmd_sn, 0, 0))
        if close:
            self._events.append(CloseConnection(f"{self.name}: logged out", error=False))

    def _text(self, pdu: TextRequest) -> None:
        if not self._advance(pdu.cmd_sn, pdu.immediate, False):
            return
        if self.text is None:
            # No keys are negotiable in full feature phase here: an empty final answer.
            self._send(TextResponse(pdu.itt, RESERVED_TAG, self._stat(), self.exp_cmd_sn,
                                    self.max_cmd_sn, True, False, pdu.lun, b""))
            return
        self._send(self.text.receive(pdu, stat_sn=self._stat(), exp_cmd_sn=self.exp_cmd_sn,
                                     max_cmd_sn=self.max_cmd_sn))


def _residual(edtl: int, spdtl: int, moved: int) -> tuple[bool, bool, int]:
    """(overflow, underflow, residual count) as RFC 7143 §11.4.5 defines them; a CDB can
    ask for more than the 32-bit field holds (WRITE(16) of 2**32 - 1 blocks): it saturates."""
    if spdtl > edtl:
        return True, False, min(spdtl - edtl, 0xFFFFFFFF)
    if edtl > moved:
        return False, True, edtl - moved
    return False, False, 0


def _header_of(pdu: Pdu) -> bytes:
    return encode_header(pdu)[:BHS_LENGTH]
