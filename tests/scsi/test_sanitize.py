"""SANITIZE, GET LBA STATUS and WRITE SAME's unmap: the CDB checks sans-I/O, then the
plans run by the executor against a real file, whose holes are the deallocated blocks."""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import pytest

from earmark.scsi import cdb, rsoc
from earmark.scsi.cdb import SanitizeAction
from earmark.scsi.disk import Disk
from earmark.scsi.inquiry import vpd_page
from earmark.scsi.plans import GOOD, LbaStatusPlan, Plan, Reply, SanitizePlan, WriteSamePlan
from earmark.scsi.reservations import Nexus, Reservations
from earmark.scsi.sbc import RESERVATION_CONFLICT, data_out_length, execute
from earmark.scsi.sense import SenseKey, parse_sense
from earmark.target.backing import FileBacking, MemoryBacking
from earmark.target.events import IoRequest
from earmark.target.executor import run_io
from earmark.target.loop_io import run_on_loop
from earmark.target.task import Task
from earmark.target.unit import LogicalUnit

BS = 512
N = 2048
THIN = Disk(num_blocks=N, serial="Z1")
THICK = Disk(num_blocks=N, serial="Z2", thin_provisioning=False)
RO = Disk(num_blocks=N, serial="Z3", read_only=True)
BAD_CDB = (SenseKey.ILLEGAL_REQUEST, 0x2400)
BAD_LIST = (SenseKey.ILLEGAL_REQUEST, 0x2600)
OW, BE, CE, EXIT = (SanitizeAction.OVERWRITE, SanitizeAction.BLOCK_ERASE,
                    SanitizeAction.CRYPTO_ERASE, SanitizeAction.EXIT_FAILURE_MODE)


def sanitize(sa: int, length: int = 0, *, immed: bool = False) -> bytes:
    return struct.pack(">BB5sHB", 0x48, sa | (0x80 if immed else 0), bytes(5), length, 0)


def overwrite_list(pattern: bytes, count: int = 1, flags: int = 0) -> bytes:
    return struct.pack(">BBH", flags | count, 0, len(pattern)) + pattern


def sense_of(out: object) -> tuple[int, int]:
    assert isinstance(out, Reply), out
    sense = parse_sense(out.sense)
    return sense.key, sense.code


def rsoc_one(opcode: int, sa: int) -> bytes:
    return struct.pack(">BBBBHIBB", 0xA3, 0x0C, rsoc.ONE_COMMAND_WITH_SA, opcode, sa, 512, 0, 0)


def test_each_action_is_reported_and_the_erases_only_on_a_thin_unit() -> None:
    for sa in SanitizeAction:
        reply = execute(rsoc_one(0x48, sa), THIN)
        assert isinstance(reply, Reply) and reply.data[1] & 0x07 == 0x03, sa
        assert reply.data[4:6] == bytes((0x48, 0xA0 | sa))  # usage: IMMED, AUSE, the SA
        thick = execute(rsoc_one(0x48, sa), THICK)
        assert isinstance(thick, Reply)
        assert thick.data[1] & 0x07 == (0x01 if sa in (BE, CE) else 0x03), sa
    assert sense_of(execute(sanitize(BE), THICK)) == BAD_CDB
    # After an erase reads succeed (WABEREQ = WACEREQ = 01b), on a unit that offers one.
    assert vpd_page(THIN, 0xB1)[7] == 0x50 and vpd_page(THICK, 0xB1)[7] == 0


def test_the_erases_and_exit_failure_mode_take_no_parameter_list() -> None:
    assert execute(sanitize(BE), THIN) == SanitizePlan(overwrite=False)
    assert execute(sanitize(CE, immed=True), THIN) == SanitizePlan(overwrite=False)
    assert execute(sanitize(EXIT), THIN) == GOOD
    for sa in (BE, CE, EXIT):
        assert sense_of(execute(sanitize(sa, 8), THIN, data_out=bytes(8))) == BAD_CDB
        assert data_out_length(sanitize(sa, 8), THIN) == 8  # received, then refused


def test_reserved_fields_and_unknown_service_actions_are_refused() -> None:
    for i in range(2, 7):
        cdb = bytearray(sanitize(BE))
        cdb[i] = i
        assert sense_of(execute(bytes(cdb), THIN)) == BAD_CDB
    cdb = bytearray(sanitize(BE))
    cdb[1] |= 0x40
    assert sense_of(execute(bytes(cdb), THIN)) == BAD_CDB
    for sa in set(range(0x20)) - set(SanitizeAction):
        assert sense_of(execute(sanitize(sa), THIN)) == BAD_CDB


def test_overwrite_parameter_list() -> None:
    good = overwrite_list(b"\xaa" * BS)
    assert execute(sanitize(OW, len(good)), THIN, data_out=good) == SanitizePlan(
        overwrite=True, pattern_at=4, pattern=BS, passes=1, invert=False)
    four = overwrite_list(b"abcd", count=3, flags=0x80)
    assert execute(sanitize(OW, 8), THICK, data_out=four) == SanitizePlan(True, 4, 4, 3, True)
    assert data_out_length(sanitize(OW, 8), THIN) == 8
    for length in (0, 1, 4, BS + 5):  # 5 .. block size + 4 bytes
        data = bytes(length)
        assert sense_of(execute(sanitize(OW, length), THIN, data_out=data)) == BAD_CDB
    refused = [overwrite_list(b"\xaa" * BS, count=0),              # OVERWRITE COUNT 0
               overwrite_list(b"", count=1) + bytes(BS),            # no pattern
               struct.pack(">BBH", 1, 0, BS + 4) + bytes(BS),       # longer than a block
               struct.pack(">BBH", 1, 0, 16) + bytes(8),            # longer than the list
               overwrite_list(b"\xaa" * 8, flags=0x20),             # TEST
               b"\x01\x01" + overwrite_list(b"\xaa" * 8)[2:]]       # reserved byte 1
    for data in refused:
        assert sense_of(execute(sanitize(OW, len(data)), THIN, data_out=data)) == BAD_LIST
    short = execute(sanitize(OW, len(good)), THIN, data_out=good[:100])
    assert sense_of(short) == (SenseKey.ILLEGAL_REQUEST, 0x1A00)


def test_write_protected_and_reservation_conflict() -> None:
    data = overwrite_list(b"\xaa" * BS)
    for sa, out in ((OW, data), (BE, b""), (CE, b"")):
        cdb = sanitize(sa, len(out))
        assert sense_of(execute(cdb, RO, data_out=out)) == (SenseKey.DATA_PROTECT, 0x2700)
        held = Reservations()
        held.reserve6(Nexus("iqn.2026-12.org.earmark:other", 1))
        assert execute(cdb, THIN, data_out=out, reservations=held) == RESERVATION_CONFLICT


@pytest.fixture
def unit(tmp_path: Path) -> LogicalUnit:
    path = tmp_path / "lun.img"
    path.write_bytes(b"")
    with open(path, "r+b") as f:
        f.truncate(N * BS)
    return LogicalUnit(0, THIN, FileBacking(path))


def run(unit: LogicalUnit, plan: Plan, data: bytes = b"") -> bytes:
    """The plan as the runtime runs it: never on the event loop, then on a thread."""
    views = [memoryview(bytearray(data))]
    task = Task(1, 1, 0, unit, b"", None)
    task.xfer = len(data)
    io = IoRequest(task, unit, plan, 0, views, last=True)
    assert not run_on_loop(io, lambda: 0.0)
    assert run_io(io) == b""
    return bytes(views[0])


def read(unit: LogicalUnit, lba: int, n: int) -> bytes:
    buf = memoryview(bytearray(n * BS))
    unit.backing.readinto(lba * BS, [buf])
    return bytes(buf)


def write(unit: LogicalUnit, lba: int, data: bytes) -> None:
    unit.backing.write(lba * BS, [memoryview(data)])


def status(unit: LogicalUnit, lba: int) -> tuple[int, int, int]:
    answer = run(unit, LbaStatusPlan(lba, 24), bytes(24))
    length, _, first, count, kind = struct.unpack_from(">IIQIB", answer)
    assert length == 20
    return first, count, kind & 0x0F


def test_overwrite_repeats_the_pattern_and_inverts_it_between_passes(unit: LogicalUnit) -> None:
    write(unit, 0, b"a" * 256 * BS)
    data = overwrite_list(b"\x0f\xf0\x01", count=2, flags=0x80)
    plan = execute(sanitize(OW, len(data)), THIN, data_out=data)
    assert isinstance(plan, SanitizePlan)
    run(unit, plan, data)
    block = (bytes((0xF0, 0x0F, 0xFE)) * BS)[:BS]  # the second pass: inverted
    assert read(unit, 0, 1) == block and read(unit, N - 1, 1) == block
    assert read(unit, 0, N) == block * N


def test_block_erase_deallocates_every_block(unit: LogicalUnit) -> None:
    write(unit, 0, b"a" * 256 * BS)
    write(unit, N - 256, b"a" * 256 * BS)
    assert status(unit, 0) == (0, 256, 0)  # mapped up to where the file's hole begins
    assert status(unit, 256) == (256, N - 512, 1)
    plan = execute(sanitize(BE), THIN)
    assert isinstance(plan, SanitizePlan)
    run(unit, plan)
    assert read(unit, 0, N) == bytes(N * BS)
    assert status(unit, 0) == (0, N, 1)
    write(unit, 8, b"b" * 8 * BS)  # written again: mapped again
    assert status(unit, 8) == (8, 8, 0) and status(unit, 16) == (16, N - 16, 1)


def test_lba_status_is_cut_to_the_allocation_length(unit: LogicalUnit) -> None:
    assert run(unit, LbaStatusPlan(5, 8), bytes(8)) == struct.pack(">II", 20, 0)


def test_write_same_with_unmap_deallocates_whatever_the_block_holds(unit: LogicalUnit) -> None:
    write(unit, N - 16, b"\xff" * 16 * BS)
    run(unit, WriteSamePlan(N - 16, 16, unmap=True), b"\xff" * BS)
    assert read(unit, N - 16, 16) == bytes(16 * BS)


class Watched(MemoryBacking):
    """Remembers, at each write, whether the unit said a sanitize was in progress."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.unit: LogicalUnit | None = None
        self.seen: list[bool] = []
        self.fail = False

    def write(self, offset: int, buffers: list[memoryview]) -> None:
        assert self.unit is not None
        self.seen.append(self.unit.disk.sanitizing)
        if self.fail:
            raise OSError(5, "Input/output error")
        super().write(offset, buffers)


def test_the_unit_is_not_ready_while_it_sanitizes_and_ready_after() -> None:
    backing = Watched(N * BS)
    unit = LogicalUnit(0, THIN, backing)
    backing.unit = unit
    data = overwrite_list(b"\x5a" * BS)
    run(unit, SanitizePlan(True, 4, BS), data)
    assert backing.seen and all(backing.seen) and not unit.disk.sanitizing
    backing.fail = True
    task = Task(1, 1, 0, unit, b"", None)
    io = IoRequest(task, unit, SanitizePlan(True, 4, BS), 0, [memoryview(data)], last=True)
    assert parse_sense(run_io(io)).key == SenseKey.MEDIUM_ERROR  # WRITE ERROR is 03h
    assert unit.disk == THIN  # however it ended


def test_what_a_sanitizing_unit_answers() -> None:
    busy = replace(THIN, sanitizing=True)
    not_ready = (SenseKey.NOT_READY, 0x041B)
    read = struct.pack(">BBQIBB", 0x88, 0, 0, 1, 0, 0)
    for command in (bytes(6), read, sanitize(BE), cdb.read_capacity_16(32)):
        assert sense_of(execute(command, busy)) == not_ready
    assert data_out_length(sanitize(OW, 8), busy) == 0  # nothing is received for it
    for command in (cdb.inquiry(), cdb.report_luns(64), rsoc_one(0x48, OW)):
        reply = execute(command, busy)
        assert isinstance(reply, Reply) and reply.status == 0, command
    sense = execute(bytes((0x03, 0, 0, 0, 18, 0)), busy)
    assert isinstance(sense, Reply) and parse_sense(sense.data).code == 0x041B
    assert sense_of(execute(sanitize(0x05), busy)) == BAD_CDB  # not a SANITIZE at all
