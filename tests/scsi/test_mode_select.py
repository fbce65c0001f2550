"""MODE SELECT: software write protection (the control page's SWP) and nothing else."""

from __future__ import annotations

import struct

from earmark.scsi import cdb
from earmark.scsi.disk import Disk
from earmark.scsi.plans import GOOD, ModeSelectPlan, Reply
from earmark.scsi.sbc import data_out_length, execute
from earmark.scsi.sense import SenseKey, parse_sense
from earmark.target.backing import MemoryBacking
from earmark.target.events import IoRequest
from earmark.target.executor import run_io
from earmark.target.task import Task
from earmark.target.unit import LogicalUnit

N = 64
DISK = Disk(num_blocks=N, serial="M1")
CONFIGURED_RO = Disk(num_blocks=N, serial="M2", read_only=True)
BAD_CDB = (SenseKey.ILLEGAL_REQUEST, 0x2400)
BAD_LIST = (SenseKey.ILLEGAL_REQUEST, 0x2600)


def sense_of(out: object) -> tuple[int, int]:
    assert isinstance(out, Reply), out
    sense = parse_sense(out.sense)
    return sense.key, sense.code


def control(disk: Disk) -> bytes:
    """The current control page, as MODE SENSE (6) with DBD reports it."""
    reply = execute(cdb.mode_sense_6(0x0A, dbd=True), disk)
    assert isinstance(reply, Reply)
    return reply.data[4:]


def select6(page: bytes, flags: int = 0x10) -> tuple[bytes, bytes]:
    data = bytes(4) + page
    return bytes((0x15, flags, 0, 0, len(data), 0)), data


def with_swp(page: bytes, on: bool) -> bytes:
    out = bytearray(page)
    out[4] = (out[4] | 0x08) if on else (out[4] & ~0x08)
    return bytes(out)


def apply(unit: LogicalUnit, plan: object) -> None:
    assert isinstance(plan, ModeSelectPlan)
    io = IoRequest(Task(1, 1, 0, unit, b"", None), unit, plan, 0, [], last=True)
    assert run_io(io) == b""


def test_swp_makes_the_unit_read_only_until_cleared() -> None:
    unit = LogicalUnit(0, DISK, MemoryBacking(N * 512))
    command, data = select6(with_swp(control(DISK), True))
    assert data_out_length(command, DISK) == len(data)
    apply(unit, execute(command, unit.disk, data_out=data))
    assert unit.disk.read_only and unit.disk.soft_write_protect
    assert control(unit.disk)[4] & 0x08
    sense = execute(cdb.mode_sense_6(0x0A), unit.disk)
    assert isinstance(sense, Reply) and sense.data[2] & 0x80  # WP in the header
    write = struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 1, 0)
    assert sense_of(execute(write, unit.disk)) == (SenseKey.DATA_PROTECT, 0x2700)
    again = select6(with_swp(control(unit.disk), True))
    assert execute(again[0], unit.disk, data_out=again[1]) == GOOD  # no change: no plan
    command, data = select6(with_swp(control(unit.disk), False))
    apply(unit, execute(command, unit.disk, data_out=data))
    assert unit.disk == DISK


def test_mode_select_10_with_a_block_descriptor() -> None:
    page = with_swp(control(DISK), True)
    data = struct.pack(">HBBBBH", 0, 0, 0, 0, 0, 8) + struct.pack(">II", 0, 512) + page
    command = struct.pack(">BBBBBBBHB", 0x55, 0x10, 0, 0, 0, 0, 0, len(data), 0)
    assert execute(command, DISK, data_out=data) == ModeSelectPlan(True)
    wrong = data[:8] + struct.pack(">II", 0, 4096) + page  # another block length
    assert sense_of(execute(command, DISK, data_out=wrong)) == BAD_LIST


def test_only_swp_changes_and_only_where_configuration_allows() -> None:
    command, data = select6(with_swp(control(CONFIGURED_RO), False))
    assert execute(command, CONFIGURED_RO, data_out=data) == GOOD
    command, data = select6(with_swp(control(CONFIGURED_RO), True))
    assert sense_of(execute(command, CONFIGURED_RO, data_out=data)) == BAD_LIST
    d_sense = bytearray(control(DISK))
    d_sense[2] |= 0x04
    command, data = select6(bytes(d_sense))
    assert sense_of(execute(command, DISK, data_out=data)) == BAD_LIST
    for page in (bytes((0x19, 2, 0, 0)), control(DISK)[:8], bytes((0x4A,)) + control(DISK)[1:]):
        command, data = select6(page)
        assert sense_of(execute(command, DISK, data_out=data)) == BAD_LIST, page


def test_cdb_fields_and_lengths() -> None:
    page = with_swp(control(DISK), True)
    for flags in (0x11, 0x00, 0x30):  # SP, no PF, a reserved bit
        command, data = select6(page, flags)
        assert sense_of(execute(command, DISK, data_out=data)) == BAD_CDB
    assert execute(bytes((0x15, 0x10, 0, 0, 0, 0)), DISK) == GOOD
    command, data = select6(page)
    short = execute(command, DISK, data_out=data[:6])
    assert sense_of(short) == (SenseKey.ILLEGAL_REQUEST, 0x1A00)
