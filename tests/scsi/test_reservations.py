"""RESERVE/RELEASE(6) and persistent reservations, through `sbc.execute` as a target runs them."""

from __future__ import annotations

import struct

import pytest

from earmark.scsi.disk import Disk
from earmark.scsi.plans import Reply
from earmark.scsi.reservations import Nexus, PrType, Reservations
from earmark.scsi.sbc import PARAMETER_LISTS, data_out_length, execute
from earmark.scsi.sense import ScsiStatus, parse_sense

DISK = Disk(num_blocks=1024, serial="R1")
A = Nexus("iqn.2026-11.org.earmark:a", 0x23D000000001)
B = Nexus("iqn.2026-11.org.earmark:b", 0x23D000000002)
READ10 = bytes((0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0))
WRITE10 = bytes((0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0))
CONFLICT = ScsiStatus.RESERVATION_CONFLICT


def run(state: Reservations, who: Nexus, cdb: bytes, data: bytes = b"") -> Reply | object:
    return execute(cdb, DISK, data_out=data, nexus=who, reservations=state)


def status(out: object) -> int:
    return out.status if isinstance(out, Reply) else ScsiStatus.GOOD


def prout(state: Reservations, who: Nexus, action: int, key: int = 0, sa_key: int = 0,
          pr_type: int = 0, flags: int = 0) -> object:
    cdb = struct.pack(">BBBBBIB", 0x5F, action, pr_type, 0, 0, 24, 0)
    return run(state, who, cdb, struct.pack(">QQIBBH", key, sa_key, 0, flags, 0, 0))


def prin(state: Reservations, who: Nexus, action: int) -> bytes:
    out = run(state, who, struct.pack(">BBIBHB", 0x5E, action, 0, 0, 8192, 0))
    assert isinstance(out, Reply) and out.status == ScsiStatus.GOOD
    return out.data


def keys(state: Reservations) -> tuple[int, list[int]]:
    data = prin(state, A, 0)
    generation, length = struct.unpack_from(">II", data)
    return generation, [struct.unpack_from(">Q", data, 8 + i)[0] for i in range(0, length, 8)]


def test_reserve6_fences_other_initiators_until_release_or_nexus_loss() -> None:
    state = Reservations()
    assert status(run(state, A, b"\x16" + bytes(5))) == ScsiStatus.GOOD
    assert status(run(state, A, b"\x16" + bytes(5))) == ScsiStatus.GOOD  # again: fine
    assert status(run(state, B, b"\x16" + bytes(5))) == CONFLICT
    assert status(run(state, B, b"\x17" + bytes(5))) == ScsiStatus.GOOD  # a no-op
    assert status(run(state, B, bytes((0x1A, 0, 0x3F, 0, 255, 0)))) == CONFLICT  # MODE SENSE
    assert status(run(state, B, READ10)) == CONFLICT
    assert status(run(state, B, bytes((0x12, 0, 0, 0, 36, 0)))) == ScsiStatus.GOOD  # INQUIRY
    assert status(run(state, A, READ10)) == ScsiStatus.GOOD
    state.nexus_lost(A)
    assert status(run(state, B, b"\x16" + bytes(5))) == ScsiStatus.GOOD
    state.reset()  # logical unit reset
    assert status(run(state, A, READ10)) == ScsiStatus.GOOD


def test_register_reserve_and_read_back() -> None:
    state = Reservations()
    assert status(prout(state, A, 6, sa_key=0xAA)) == ScsiStatus.GOOD  # REGISTER AND IGNORE
    assert status(prout(state, B, 0, sa_key=0xBB)) == ScsiStatus.GOOD  # REGISTER
    assert keys(state) == (2, [0xAA, 0xBB])
    assert status(prout(state, B, 0, key=0x99, sa_key=0xBC)) == CONFLICT  # wrong key
    assert status(prout(state, A, 1, key=0xAA, pr_type=PrType.WRITE_EXCLUSIVE)) == 0
    data = prin(state, B, 1)
    assert struct.unpack_from(">IIQ", data) == (2, 16, 0xAA) and data[21] == 0x01
    # Write Exclusive: B may read, not write; A may do both.
    assert status(run(state, B, READ10)) == ScsiStatus.GOOD
    assert status(run(state, B, WRITE10)) == CONFLICT
    assert status(run(state, A, WRITE10)) == ScsiStatus.GOOD
    # RESERVE(6) conflicts with any registration.
    assert status(run(state, A, b"\x16" + bytes(5))) == CONFLICT
    # Release with the wrong type is an error; with the right one it ends the reservation.
    wrong = prout(state, A, 2, key=0xAA, pr_type=PrType.EXCLUSIVE_ACCESS)
    assert isinstance(wrong, Reply) and parse_sense(wrong.sense).code == 0x2604
    assert status(prout(state, A, 2, key=0xAA, pr_type=PrType.WRITE_EXCLUSIVE)) == 0
    assert struct.unpack_from(">II", prin(state, A, 1)) == (2, 0)
    # Full status names both initiators by their iSCSI TransportID.
    full = prin(state, A, 3)
    assert A.initiator.encode() in full and b",i,0x23d000000002" in full


@pytest.mark.parametrize(("pr_type", "registered_may_write", "unregistered_may_read"), [
    (PrType.EXCLUSIVE_ACCESS, False, False),
    (PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, True, True),
    (PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY, True, False),
    (PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS, True, False),
])
def test_access_by_type(pr_type: PrType, registered_may_write: bool,
                        unregistered_may_read: bool) -> None:
    state = Reservations()
    prout(state, A, 6, sa_key=1)
    prout(state, B, 6, sa_key=2)
    assert status(prout(state, A, 1, key=1, pr_type=pr_type)) == ScsiStatus.GOOD
    assert (status(run(state, B, WRITE10)) == 0) == registered_may_write
    prout(state, B, 0, key=2)  # unregister B
    assert status(run(state, B, WRITE10)) == CONFLICT
    assert (status(run(state, B, READ10)) == 0) == unregistered_may_read


def test_holder_unregistering_ends_a_single_holder_reservation_only() -> None:
    for pr_type, stays in ((PrType.EXCLUSIVE_ACCESS, False),
                           (PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, True)):
        state = Reservations()
        prout(state, A, 6, sa_key=1)
        prout(state, B, 6, sa_key=2)
        prout(state, A, 1, key=1, pr_type=pr_type)
        prout(state, A, 0, key=1)
        header = struct.unpack_from(">II", prin(state, A, 1))
        assert header[1] == (16 if stays else 0)
        if stays:  # all registrants: the key reads as 0, and B may release it
            assert struct.unpack_from(">Q", prin(state, A, 1), 8)[0] == 0
            assert status(prout(state, B, 2, key=2, pr_type=pr_type)) == ScsiStatus.GOOD
            assert state.pr_type is None


def test_preempt_clear_and_generation() -> None:
    state = Reservations()
    prout(state, A, 6, sa_key=1)
    prout(state, B, 6, sa_key=2)
    prout(state, A, 1, key=1, pr_type=PrType.EXCLUSIVE_ACCESS)
    before, _ = keys(state)
    assert status(prout(state, B, 4, key=2, sa_key=1, pr_type=PrType.WRITE_EXCLUSIVE)) == 0
    generation, left = keys(state)
    assert (generation, left) == (before + 1, [2])
    assert state.holder == B and state.pr_type == PrType.WRITE_EXCLUSIVE
    assert status(prout(state, A, 4, key=1, sa_key=2)) == CONFLICT  # A is no longer registered
    assert status(prout(state, B, 4, key=2, sa_key=7, pr_type=1)) == CONFLICT  # no key 7
    assert status(prout(state, B, 3, key=2)) == ScsiStatus.GOOD  # CLEAR
    assert keys(state) == (before + 2, []) and state.pr_type is None


def test_prout_refusals_and_capabilities() -> None:
    state = Reservations()
    aptpl = prout(state, A, 6, sa_key=1, flags=0x01)
    assert isinstance(aptpl, Reply) and parse_sense(aptpl.sense).code == 0x2600
    short = run(state, A, struct.pack(">BBBBBIB", 0x5F, 6, 0, 0, 0, 16, 0), bytes(16))
    assert isinstance(short, Reply) and parse_sense(short.sense).code == 0x1A00
    prout(state, A, 6, sa_key=1)
    bad_type = prout(state, A, 1, key=1, pr_type=2)
    assert isinstance(bad_type, Reply) and parse_sense(bad_type.sense).code == 0x2400
    for action in range(4, 0x20):  # PRIN service actions past READ FULL STATUS
        out = run(state, A, struct.pack(">BBIBHB", 0x5E, action, 0, 0, 100, 0))
        assert isinstance(out, Reply) and out.status == ScsiStatus.CHECK_CONDITION
    caps = prin(state, A, 2)
    length, _, tmv, mask = struct.unpack_from(">HBBH", caps)
    assert length == 8 and tmv & 0x80 and mask == 0xEA01
    assert 0x5F in PARAMETER_LISTS and data_out_length(
        struct.pack(">BBBBBIB", 0x5F, 0, 0, 0, 0, 24, 0), DISK) == 24
