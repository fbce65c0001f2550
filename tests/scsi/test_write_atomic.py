"""WRITE ATOMIC (16): offered only with a limit, checked like a write, run under the unit's lock."""

from __future__ import annotations

import struct
import threading

from earmark.scsi.disk import Disk
from earmark.scsi.inquiry import vpd_page
from earmark.scsi.plans import Reply, WritePlan
from earmark.scsi.sbc import data_out_length, execute
from earmark.scsi.sense import parse_sense
from earmark.target.backing import MemoryBacking
from earmark.target.events import IoRequest
from earmark.target.executor import run_io
from earmark.target.unit import LogicalUnit

ATOMIC = Disk(num_blocks=1024, serial="W1", max_atomic_blocks=64)
PLAIN = Disk(num_blocks=1024, serial="W2")


def write_atomic(lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQHHBB", 0x9C, flags, lba, 0, n, 0, 0)


def code(out: object) -> int:
    assert isinstance(out, Reply)
    return parse_sense(out.sense).code


def test_offered_only_with_a_limit_and_the_vpd_says_so() -> None:
    assert code(execute(write_atomic(0, 1), PLAIN)) == 0x2000
    assert struct.unpack_from(">I", vpd_page(PLAIN, 0xB0), 44)[0] == 0
    assert struct.unpack_from(">I", vpd_page(ATOMIC, 0xB0), 44)[0] == 64
    assert data_out_length(write_atomic(0, 8), ATOMIC) == 8 * 512


def test_limits_range_and_protection_are_checked() -> None:
    assert execute(write_atomic(0, 64), ATOMIC) == WritePlan(0, 64, False, atomic=True)
    assert code(execute(write_atomic(0, 65), ATOMIC)) == 0x2400
    assert code(execute(write_atomic(1020, 8), ATOMIC)) == 0x2100
    assert code(execute(write_atomic(1 << 63, 0), ATOMIC)) == 0x2100
    assert code(execute(write_atomic(0, 8, flags=0x20), ATOMIC)) == 0x2400
    assert execute(write_atomic(0, 0), ATOMIC) == Reply()
    fua = execute(write_atomic(0, 8, flags=0x08), ATOMIC)
    assert isinstance(fua, WritePlan) and fua.fua


def test_the_write_waits_for_the_units_atomic_lock() -> None:
    unit = LogicalUnit(0, ATOMIC, MemoryBacking(1024 * 512))
    plan = execute(write_atomic(2, 1), ATOMIC)
    assert isinstance(plan, WritePlan)
    io = IoRequest(task=None, unit=unit, plan=plan, offset=0,  # type: ignore[arg-type]
                   views=[memoryview(b"\xa6" * 512)], last=True)
    with unit.atomic:  # a COMPARE AND WRITE in progress
        worker = threading.Thread(target=run_io, args=(io,))
        worker.start()
        worker.join(0.2)
        assert worker.is_alive()
        got = memoryview(bytearray(512))
        unit.backing.readinto(2 * 512, [got])
        assert not any(got)
    worker.join(5)
    unit.backing.readinto(2 * 512, [got])
    assert bytes(got) == b"\xa6" * 512
