"""Fuzz harness: a whole target session (`earmark.target.session.TargetSession`) driven
sans-I/O, with the runtime's part played synchronously by the session tests' `Rig`.

An input draws the session's parameters and slots, then steps in any order: SCSI
commands (a common opcode or any, the rest of the CDB drawn; any length, direction,
immediate data, CmdSN in order or not, ITTs new or reused, some LUN), Data-Out (for a
task and an R2T the session sent, or anything; placed where `placement` says, as the
framer does, or not), task management, NOP-Out (answers to the session's pings too),
logout, text, SNACK, I/O completed now or later and in any order (some failing with
a MEDIUM ERROR), time passing (NOP-In pings, their timeout), and the fair share
moving (slots granted). After a `CloseConnection` nothing more is received, as the
runtime stops reading. Then the connection goes, before or after the I/O still
running returns.

A crash is any exception out of the session (it turns a peer's ProtocolError into a
Reject and a close itself), a PDU it sends that does not frame, and these broken
invariants: a window (MaxCmdSN - ExpCmdSN + 1) larger than the slots it holds less
those its tasks hold, or one in any PDU it sends larger than the slots it holds; a
memory allocation under `reserve`; anything left in the arena once the session is
closed and its I/O has returned.
"""

from __future__ import annotations

from earmark.iscsi.opcodes import TmfFunction
from earmark.iscsi.pdu import (
    R2T,
    RESERVED_TAG,
    DataOut,
    LogoutRequest,
    NopIn,
    NopOut,
    Pdu,
    ScsiCommand,
    SnackRequest,
    TaskMgmtRequest,
    TextRequest,
    encode_header,
)
from earmark.iscsi.serial import sn_diff
from earmark.memory import Arena
from earmark.memory.levels import TargetLevel
from earmark.scsi.sense import ScsiError, SenseKey
from earmark.target.backing import MemoryBacking
from earmark.target.events import IoRequest
from earmark.target.executor import run_io
from tests.fuzz.draw import Draw
from tests.target.test_session import BS, SLOT, Rig

_OPCODES = (0x00, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x16, 0x17, 0x1A, 0x1B, 0x1E, 0x25, 0x28,
            0x2A, 0x2E, 0x2F, 0x35, 0x41, 0x42, 0x55, 0x5A, 0x5E, 0x5F, 0x83, 0x84, 0x88,
            0x89, 0x8A, 0x8E, 0x8F, 0x91, 0x93, 0x9C, 0x9E, 0xA0, 0xA3)
_SIZE = 1 << 20
_BLOCKS = _SIZE // BS
#: Made once: a run ends with the arena idle (checked) and the disk zeroed.
_ARENA = Arena(_SIZE, levels=TargetLevel)
_DISK = MemoryBacking(_SIZE)
_ZEROS = bytes(_SIZE)
_MEDIUM_ERROR = ScsiError(SenseKey.MEDIUM_ERROR, 0x11, 0x00).sense()


class _Driver:
    def __init__(self, draw: Draw) -> None:
        self.draw = draw
        max_burst = draw.pick((512, 4096, 32 * 1024, 64 * 1024))
        _DISK.write(0, [memoryview(_ZEROS)])
        self.rig = Rig(
            arena=_ARENA, backing=_DISK, slots=1 + draw.below(4),
            initiator_mrdsl=draw.pick((512, 8192)),
            max_burst_length=max_burst,
            first_burst_length=min(max_burst, draw.pick((512, 4096, 16 * 1024))),
            initial_r2t=draw.flag(), immediate_data=draw.flag(),
            max_outstanding_r2t=1 + draw.below(4),
        )
        self.itt = 1
        #: (ITT, TTT, offset, length) of every R2T sent, and the TTTs of NOP-In pings.
        self.r2ts: list[tuple[int, int, int, int]] = []
        self.pings: list[int] = []

    # ---------------------------------------------------------------- checks

    def held(self) -> int:
        return len(self.rig.arena.reservations_of("slots"))

    def check(self, out: list[Pdu]) -> None:
        rig, held = self.rig, self.held()
        session = rig.session
        # Every task the session knows holds a slot of its own, out of the window.
        assert sn_diff(session.max_cmd_sn, session.exp_cmd_sn) + 1 <= held - len(
            session.tasks), (session.exp_cmd_sn, session.max_cmd_sn, held, len(session.tasks))
        for pdu in out:
            exp, top = getattr(pdu, "exp_cmd_sn", None), getattr(pdu, "max_cmd_sn", None)
            if exp is not None and top is not None:
                assert sn_diff(top, exp) + 1 <= held, pdu
            if isinstance(pdu, R2T):
                self.r2ts.append((pdu.itt, pdu.ttt, pdu.buffer_offset,
                                  pdu.desired_data_transfer_length))
            elif isinstance(pdu, NopIn) and pdu.ttt != RESERVED_TAG:
                self.pings.append(pdu.ttt)
        assert not rig.allocs, "an allocation under reserve"

    # ----------------------------------------------------------------- steps

    def cmd_sn(self) -> int:
        draw, rig = self.draw, self.rig
        if draw.uint(1) < 224:
            sn = rig.cmd_sn
            rig.cmd_sn += 1
            return sn
        sn = rig.session.exp_cmd_sn + draw.below(5) - 2 if draw.flag() else draw.uint(4)
        return sn % (1 << 32)

    def task_tag(self) -> int:
        draw, tasks = self.draw, sorted(self.rig.session.tasks)
        if tasks and draw.flag():
            return draw.pick(tasks)
        return draw.uint(4) if draw.uint(1) < 16 else (self.itt - draw.below(4)) % (1 << 32)

    def lun(self) -> int:
        return 0 if self.draw.uint(1) < 240 else self.draw.below(4)

    def command(self) -> Pdu:
        draw = self.draw
        op = draw.pick(_OPCODES) if draw.uint(1) < 240 else draw.uint(1)
        rest = bytearray(draw.take(15).ljust(15, b"\0"))
        if draw.uint(1) < 192:  # an LBA and length the disk has, mostly
            rest[1:9] = bytes(8)
            rest[1:5] = (draw.below(_BLOCKS)).to_bytes(4, "big")
        edtl = draw.pick((0, 512, 4096, 65536)) if draw.flag() else draw.uint(3)
        read, write = draw.flag(), draw.flag()
        data = draw.blob(20 * 1024) if draw.uint(1) < 96 else b""
        immediate = draw.uint(1) < 16
        itt = self.itt if draw.uint(1) < 224 else self.task_tag()
        self.itt += 1
        return ScsiCommand(itt=itt, cdb=bytes([op]) + bytes(rest),
                           expected_data_transfer_length=edtl, cmd_sn=self.cmd_sn(),
                           lun=self.lun(), final=draw.uint(1) < 240, read=read, write=write,
                           immediate=immediate, data=data)

    def data_out(self) -> DataOut:
        draw = self.draw
        if self.r2ts and draw.flag():
            itt, ttt, offset, length = draw.pick(self.r2ts)
            offset += draw.below(2) * draw.pick((0, 512, 4096))
            size = min(length, draw.pick((512, 4096, 8192)) if draw.flag() else draw.uint(2))
        else:
            itt, ttt = self.task_tag(), RESERVED_TAG if draw.flag() else draw.uint(4)
            offset, size = draw.pick((0, 512, 4096, 16384)), draw.uint(2) % 20000
        return DataOut(itt=itt, ttt=ttt, data_sn=draw.below(4), buffer_offset=offset,
                       final=draw.flag(), lun=self.lun(), data=draw.take(size).ljust(size, b"\0"))

    def send_data_out(self, pdu: DataOut) -> list[Pdu]:
        """As the framer does: into the task's buffer when `placement` names it."""
        session = self.rig.session
        views = session.placement(encode_header(pdu)) if self.draw.flag() else None
        if views is None:
            return self.rig.send(pdu, run=self.draw.flag())
        at = 0
        for view in views:
            view[:] = pdu.data[at : at + len(view)]
            at += len(view)
        pdu.data = views[0] if len(views) == 1 else b"".join(views)
        session.receive(pdu, self.rig.now, placed=True)
        return self.rig.pump(run=self.draw.flag())

    def tmf(self) -> Pdu:
        draw = self.draw
        fn = draw.pick(list(TmfFunction)) if draw.uint(1) < 240 else draw.below(128)
        itt = self.itt
        self.itt += 1
        immediate = draw.uint(1) < 224
        return TaskMgmtRequest(function=fn, itt=itt, referenced_task_tag=self.task_tag(),
                               cmd_sn=self.rig.cmd_sn if immediate else self.cmd_sn(),
                               ref_cmd_sn=draw.uint(4), lun=self.lun(), immediate=immediate)

    def nop(self) -> Pdu:
        draw = self.draw
        if self.pings and draw.flag():
            return NopOut(itt=RESERVED_TAG, ttt=draw.pick(self.pings), cmd_sn=self.rig.cmd_sn,
                          immediate=True)
        immediate = draw.flag()
        itt = RESERVED_TAG if draw.uint(1) < 64 else self.itt
        self.itt += 1
        return NopOut(itt=itt, ttt=RESERVED_TAG if draw.uint(1) < 240 else draw.uint(4),
                      cmd_sn=self.rig.cmd_sn if immediate else self.cmd_sn(),
                      immediate=immediate, data=draw.blob(1024))

    def finish_io(self) -> list[Pdu]:
        rig, draw = self.rig, self.draw
        if not rig.pending:
            return []
        io: IoRequest = rig.pending.pop(draw.below(len(rig.pending)))
        rig.session.io_done(io, _MEDIUM_ERROR if draw.uint(1) < 16 else run_io(io))
        return rig.pump(run=draw.flag())

    def step(self) -> list[Pdu]:
        draw, rig = self.draw, self.rig
        what = draw.below(16)
        if what < 5:
            return rig.send(self.command(), run=draw.uint(1) < 192)
        if what < 8:
            return self.send_data_out(self.data_out())
        if what == 8:
            return rig.send(self.tmf(), run=draw.flag())
        if what == 9:
            return rig.send(self.nop())
        if what == 10:
            immediate = draw.flag()
            return rig.send(LogoutRequest(
                reason=draw.below(4), itt=self.itt,
                cmd_sn=rig.cmd_sn if immediate else self.cmd_sn(), immediate=immediate))
        if what == 11:
            return rig.send(TextRequest(itt=self.itt, cmd_sn=self.cmd_sn(),
                                        final=draw.flag(), data=b"SendTargets=All\0"))
        if what == 12:
            return rig.send(SnackRequest(type=draw.below(4), itt=self.task_tag()))
        if what == 13:
            rig.now += draw.pick((0.5, 5.0, 11.0))
            rig.session.handle_timer(rig.now)
            return rig.pump()
        if what == 14:
            session = rig.session
            session.slot_target = 1 + draw.below(8)
            for _ in range(session.slot_demand()):
                slot = rig.arena.reserve_now(SLOT, owner="slots")
                if slot is None:
                    break  # the runtime would wait for one
                session.add_slot(slot)
            return rig.pump()
        return self.finish_io()

    def end(self) -> None:
        """The connection goes; its I/O returns before or after, in any order."""
        rig, draw = self.rig, self.draw
        if draw.flag():
            while rig.pending:
                self.check(self.finish_io())
        for slot in rig.session.close():
            slot.release()
        while rig.pending:
            io = rig.pending.pop(draw.below(len(rig.pending)))
            rig.session.io_done(io, run_io(io))
            rig.pump(run=False)
        assert not rig.session.tasks or all(t.aborted for t in rig.session.tasks.values())
        assert rig.arena.committed == 0, rig.arena.holdings()


def one_input(data: bytes) -> None:
    draw = Draw(data)
    driver = _Driver(draw)
    rig = driver.rig
    while draw.left and not rig.closed:
        driver.check(driver.step())
    driver.end()
