"""A removable medium: RMB, PREVENT ALLOW MEDIUM REMOVAL, START STOP UNIT with LOEJ."""

from __future__ import annotations

from pathlib import Path

from earmark.scsi import cdb
from earmark.scsi.disk import Disk
from earmark.scsi.plans import GOOD, MediumPlan, Reply, SyncPlan
from earmark.scsi.reservations import Nexus, Reservations
from earmark.scsi.sbc import execute
from earmark.scsi.sense import SenseKey, parse_sense
from earmark.target.backing import MemoryBacking
from earmark.target.config import from_options, load
from earmark.target.events import IoRequest
from earmark.target.executor import run_io
from earmark.target.task import Task
from earmark.target.unit import LogicalUnit

DISK = Disk(num_blocks=64, serial="R1", removable=True)
FIXED = Disk(num_blocks=64, serial="R2")
A = Nexus("iqn.2026-12.org.earmark:a", 1)
B = Nexus("iqn.2026-12.org.earmark:b", 2)
NO_MEDIUM = (SenseKey.NOT_READY, 0x3A00)
PREVENTED = (SenseKey.ILLEGAL_REQUEST, 0x5302)
TUR = bytes(6)


def start_stop(*, loej: bool, start: bool, power: int = 0) -> bytes:
    return bytes((0x1B, 0, 0, 0, (power << 4) | (0x02 if loej else 0) | int(start), 0))


def prevent(on: int) -> bytes:
    return bytes((0x1E, 0, 0, 0, on, 0))


def sense_of(out: object) -> tuple[int, int]:
    assert isinstance(out, Reply), out
    sense = parse_sense(out.sense)
    return sense.key, sense.code


def apply(unit: LogicalUnit, plan: object) -> None:
    assert isinstance(plan, MediumPlan)
    io = IoRequest(Task(1, 1, 0, unit, b"", None), unit, plan, 0, [], last=True)
    assert run_io(io) == b""


def test_rmb_and_prevent_allow_only_on_a_removable_unit() -> None:
    for disk, rmb in ((DISK, 0x80), (FIXED, 0)):
        reply = execute(cdb.inquiry(), disk)
        assert isinstance(reply, Reply) and reply.data[1] == rmb
    assert sense_of(execute(prevent(1), FIXED)) == (SenseKey.ILLEGAL_REQUEST, 0x2000)
    assert sense_of(execute(start_stop(loej=True, start=False), FIXED))[1] == 0x2400
    for value in (2, 3):
        assert sense_of(execute(prevent(value), DISK))[1] == 0x2400


def test_eject_then_medium_not_present_until_loaded() -> None:
    unit = LogicalUnit(0, DISK, MemoryBacking(64 * 512))
    apply(unit, execute(start_stop(loej=True, start=False), unit.disk))
    assert unit.disk.ejected
    read = bytes((0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0))
    for command in (TUR, read, cdb.read_capacity_16(32), start_stop(loej=False, start=True)):
        assert sense_of(execute(command, unit.disk)) == NO_MEDIUM
    inquiry = execute(cdb.inquiry(), unit.disk)
    assert isinstance(inquiry, Reply) and inquiry.status == 0
    # Ejecting what is out, or allowing removal, changes nothing and needs no medium.
    assert execute(start_stop(loej=True, start=False), unit.disk) == GOOD
    assert execute(prevent(0), unit.disk, nexus=A) == GOOD
    apply(unit, execute(start_stop(loej=True, start=True), unit.disk))
    assert unit.disk == DISK and execute(TUR, unit.disk) == GOOD
    assert execute(start_stop(loej=False, start=False), unit.disk) == SyncPlan()
    # A power condition wins over LOEJ: no eject.
    assert execute(start_stop(loej=True, start=False, power=1), unit.disk) == GOOD


def test_a_prevention_holds_for_every_nexus_until_allowed_lost_or_reset() -> None:
    state = Reservations()
    eject = start_stop(loej=True, start=False)
    load = start_stop(loej=True, start=True)
    assert execute(prevent(1), DISK, nexus=A, reservations=state) == GOOD
    for nexus in (A, B):
        assert sense_of(execute(eject, DISK, nexus=nexus, reservations=state)) == PREVENTED
    assert sense_of(execute(load, DISK, nexus=B, reservations=state)) == PREVENTED
    assert execute(prevent(0), DISK, nexus=B, reservations=state) == GOOD  # not B's to end
    assert sense_of(execute(eject, DISK, nexus=B, reservations=state)) == PREVENTED
    assert execute(prevent(0), DISK, nexus=A, reservations=state) == GOOD
    assert execute(eject, DISK, nexus=B, reservations=state) == MediumPlan(loaded=False)
    for lost in (True, False):
        execute(prevent(1), DISK, nexus=A, reservations=state)
        if lost:
            state.nexus_lost(A)  # logout, or the connection dropped
        else:
            state.reset()  # LOGICAL UNIT RESET, TARGET WARM or COLD RESET
        assert execute(eject, DISK, nexus=B, reservations=state) == MediumPlan(loaded=False)


def test_removable_in_the_config_file_and_on_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text('[[target]]\niqn = "iqn.2026-12.org.earmark:r"\n'
                      '[[target.lun]]\nfile = "a.img"\nremovable = true\n'
                      '[[target.lun]]\nfile = "b.img"\n')
    assert [lun.removable for lun in load(config).targets[0].luns] == [True, False]
    flagged = from_options(None, config, removable=True)
    assert [lun.removable for lun in flagged.targets[0].luns] == [True, True]
    (lun,) = from_options(tmp_path / "d.img", None, removable=True).targets[0].luns
    assert lun.removable and not lun.readonly
