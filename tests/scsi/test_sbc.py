"""The target's SBC command set, case by case as libiscsi's iscsi-test-cu checks it."""

import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from earmark.scsi import cdb
from earmark.scsi.disk import Disk
from earmark.scsi.plans import (
    GOOD,
    CompareAndWritePlan,
    Extent,
    LbaStatusPlan,
    OrWritePlan,
    ReadPlan,
    Reply,
    SanitizePlan,
    SyncPlan,
    UnmapPlan,
    VerifyPlan,
    WritePlan,
    WriteSamePlan,
    first_mismatch,
)
from earmark.scsi.sbc import data_in_length, data_out_length, execute, execute_without_lun
from earmark.scsi.sense import ScsiStatus, SenseKey, parse_sense

N = 10_000
THIN = Disk(num_blocks=N, serial="S1")
THICK = Disk(num_blocks=N, serial="S2", thin_provisioning=False, write_cache=False)
RO = Disk(num_blocks=N, serial="S3", read_only=True)
BIG = Disk(num_blocks=1 << 40, serial="S4", block_size=4096)


def sense_of(out: object) -> tuple[int, int]:
    assert isinstance(out, Reply) and out.status == ScsiStatus.CHECK_CONDITION, out
    s = parse_sense(out.sense)
    return s.key, s.code


def data_of(out: object) -> bytes:
    assert isinstance(out, Reply) and out.status == ScsiStatus.GOOD, out
    return out.data


ILLEGAL = SenseKey.ILLEGAL_REQUEST
OOB = (ILLEGAL, 0x2100)
BAD_FIELD = (ILLEGAL, 0x2400)
BAD_OPCODE = (ILLEGAL, 0x2000)
PROTECTED = (SenseKey.DATA_PROTECT, 0x2700)


def rw10(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", op, flags, lba & 0xFFFFFFFF, 0, n, 0)


def rw12(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIIBB", op, flags, lba & 0xFFFFFFFF, n, 0, 0)


def rw16(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", op, flags, lba & (2**64 - 1), n, 0, 0)


Op = cdb.Opcode


# READ / WRITE ---------------------------------------------------------------

@pytest.mark.parametrize("build", [rw10, rw12, rw16])
def test_read_plans_and_range(build: Callable[..., bytes]) -> None:
    op = {rw10: Op.READ_10, rw12: Op.READ_12, rw16: Op.READ_16}[build]
    b = build
    assert execute(b(op, 0, 1), THIN) == ReadPlan(0, 1)
    assert execute(b(op, N - 256, 256), THIN) == ReadPlan(N - 256, 256)
    assert execute(b(op, 0, 0), THIN) == GOOD
    assert execute(b(op, N, 0), THIN) == GOOD
    for lba, n in [(N + 1, 0), (N, 1), (N - 1, 2), (0x80000000, 1), (-1, 1), (-1, 0)]:
        assert sense_of(execute(b(op, lba, n), THIN)) == OOB


def test_read16_huge_lba_and_dpo_fua() -> None:
    assert sense_of(execute(rw16(Op.READ_16, 2**63, 0), THIN)) == OOB
    assert execute(rw16(Op.READ_16, 5, 1, 0x18), THIN) == ReadPlan(5, 1)
    assert execute(rw16(Op.READ_16, (1 << 40) - 8, 8), BIG) == ReadPlan((1 << 40) - 8, 8)


@pytest.mark.parametrize("protect", range(1, 8))
def test_rdprotect_and_wrprotect_are_invalid_fields(protect: int) -> None:
    flags = protect << 5
    for op in (Op.READ_10, Op.WRITE_10, Op.VERIFY_10, Op.WRITE_AND_VERIFY_10, Op.WRITE_SAME_10):
        out = execute(rw10(op, 0, 1, flags), THIN)
        key, code = sense_of(out)
        assert (key, code) == BAD_FIELD
        assert parse_sense(out.sense).field == 1  # type: ignore[union-attr]


def test_write_flags_fua_and_write_cache() -> None:
    for flags in (0x10, 0x08, 0x0A, 0x02, 0x1A):  # DPO, FUA, FUA+FUA_NV, FUA_NV, all
        out = execute(rw10(Op.WRITE_10, 0, 1, flags), THIN)
        assert out == WritePlan(0, 1, bool(flags & 0x08))
    assert execute(rw10(Op.WRITE_10, 0, 1), THICK) == WritePlan(0, 1, True)
    assert sense_of(execute(rw16(Op.WRITE_16, N + 1, 0), THIN)) == OOB
    assert sense_of(execute(rw10(Op.WRITE_10, N - 1, 2), THIN)) == OOB


def test_read6_write6() -> None:
    assert execute(bytes((Op.READ_6, 0, 0, 0, 0, 0)), THIN) == ReadPlan(0, 256)
    assert execute(bytes((Op.WRITE_6, 0, 0, 9, 3, 0)), THIN) == WritePlan(9, 3, False)
    assert sense_of(execute(bytes((Op.READ_6, 0x1F, 0xFF, 0xFF, 1, 0)), THIN)) == OOB


def test_transfer_limit_is_invalid_field() -> None:
    small = Disk(num_blocks=N, serial="S", max_transfer_bytes=64 * 512)
    assert execute(rw10(Op.READ_10, 0, 64), small) == ReadPlan(0, 64)
    out = execute(rw10(Op.READ_10, 0, 65), small)
    assert sense_of(out) == BAD_FIELD and parse_sense(out.sense).field == 7  # type: ignore[union-attr]


def test_read_only_refuses_every_write() -> None:
    cases = [
        rw10(Op.WRITE_10, 0, 1), rw12(Op.WRITE_12, 0, 1), rw16(Op.WRITE_16, 0, 1),
        rw10(Op.WRITE_AND_VERIFY_10, 0, 1, 0x02), rw16(Op.WRITE_AND_VERIFY_16, 0, 1, 0x02),
        rw10(Op.WRITE_SAME_10, 0, 1), rw10(Op.WRITE_SAME_10, 0, 1, 0x08),
        rw16(Op.WRITE_SAME_16, 0, 1, 0x08), rw16(Op.ORWRITE_16, 0, 1),
        cdb.unmap(24), struct.pack(">BBQBBBBBB", Op.COMPARE_AND_WRITE, 0, 0, 0, 0, 0, 1, 0, 0),
    ]
    for c in cases:
        assert sense_of(execute(c, RO)) == PROTECTED, c.hex()
    assert execute(rw10(Op.READ_10, 0, 1), RO) == ReadPlan(0, 1)
    ms = data_of(execute(cdb.mode_sense_6(0x3F), RO))
    assert ms[2] & 0x80  # WP in the device-specific parameter


# VERIFY / WRITE AND VERIFY ----------------------------------------------------

def test_verify_bytchk() -> None:
    assert execute(rw10(Op.VERIFY_10, 3, 4, 0x02), THIN) == VerifyPlan(3, 4, 1)
    assert execute(rw16(Op.VERIFY_16, 3, 4, 0x00), THIN) == VerifyPlan(3, 4, 0)
    assert execute(rw12(Op.VERIFY_12, 3, 4, 0x06), THIN) == VerifyPlan(3, 4, 3)
    assert execute(rw10(Op.VERIFY_10, 0, 1, 0x10), THIN) == VerifyPlan(0, 1, 0)  # DPO
    assert sense_of(execute(rw10(Op.VERIFY_10, 0, 1, 0x04), THIN)) == BAD_FIELD
    assert sense_of(execute(rw10(Op.VERIFY_10, N + 1, 0, 0x02), THIN)) == OOB
    assert execute(rw10(Op.VERIFY_10, 0, 0, 0x02), THIN) == GOOD
    assert data_out_length(rw10(Op.VERIFY_10, 0, 4, 0x02), THIN) == 4 * 512
    assert data_out_length(rw10(Op.VERIFY_10, 0, 4, 0x06), THIN) == 512
    assert data_out_length(rw10(Op.VERIFY_10, 0, 4, 0x00), THIN) == 0


def test_write_and_verify_is_a_fua_write() -> None:
    assert execute(rw10(Op.WRITE_AND_VERIFY_10, 8, 2, 0x02), THIN) == WritePlan(8, 2, True)
    assert execute(rw12(Op.WRITE_AND_VERIFY_12, 8, 2, 0x10), THIN) == WritePlan(8, 2, True)
    assert sense_of(execute(rw16(Op.WRITE_AND_VERIFY_16, N, 1), THIN)) == OOB


def test_first_mismatch() -> None:
    a = bytes(5000)
    b = bytearray(a)
    assert first_mismatch(a, memoryview(b)) is None
    b[4321] = 1
    assert first_mismatch(a, memoryview(b)) == 4321
    assert first_mismatch(b"abc", b"ab") == 2


# WRITE SAME / UNMAP -----------------------------------------------------------

def test_write_same_basic_and_until_end() -> None:
    assert execute(rw10(Op.WRITE_SAME_10, 0, 256), THIN) == WriteSamePlan(0, 256)
    assert execute(rw16(Op.WRITE_SAME_16, 1, 5, 0x08), THIN) == WriteSamePlan(1, 5, True)
    assert execute(rw16(Op.WRITE_SAME_16, 1, 5, 0x09), THIN) == WriteSamePlan(1, 5, True, True)
    assert execute(rw10(Op.WRITE_SAME_10, N - 3, 0, 0x08), THIN) == WriteSamePlan(N - 3, 3, True)
    assert execute(rw10(Op.WRITE_SAME_10, N, 0), THIN) == GOOD
    for lba, n in [(N + 1, 0), (N, 1), (N - 1, 2), (0x80000000, 1), (-1, 0)]:
        assert sense_of(execute(rw10(Op.WRITE_SAME_10, lba, n), THIN)) == OOB
    assert sense_of(execute(rw16(Op.WRITE_SAME_16, 2**63, 0), THIN)) == OOB


def test_write_same_limits_and_flags() -> None:
    disk = Disk(num_blocks=N, serial="S", max_write_same_blocks=1000)
    assert sense_of(execute(rw10(Op.WRITE_SAME_10, 0, 0), disk)) == BAD_FIELD  # whole LUN
    assert sense_of(execute(rw10(Op.WRITE_SAME_10, N - 1001, 0), disk)) == BAD_FIELD
    assert execute(rw10(Op.WRITE_SAME_10, N - 1000, 0), disk) == WriteSamePlan(N - 1000, 1000)
    assert sense_of(execute(rw10(Op.WRITE_SAME_10, 0, 1, 0x10), THIN)) == BAD_FIELD  # ANCHOR
    assert sense_of(execute(rw10(Op.WRITE_SAME_10, 0, 1, 0x18), THIN)) == BAD_FIELD
    assert sense_of(execute(rw10(Op.WRITE_SAME_10, 0, 1, 0x01), THIN)) == BAD_FIELD  # no NDOB
    assert sense_of(execute(rw10(Op.WRITE_SAME_10, 0, 1, 0x08), THICK)) == BAD_FIELD
    assert sense_of(execute(rw10(Op.WRITE_SAME_10, 0, 1), THIN, edtl=256)) == BAD_FIELD
    assert execute(rw10(Op.WRITE_SAME_10, 0, 1), THIN, edtl=512) == WriteSamePlan(0, 1)
    assert data_out_length(rw16(Op.WRITE_SAME_16, 0, 9, 0x09), THIN) == 0
    assert data_out_length(rw16(Op.WRITE_SAME_16, 0, 9), THIN) == 512


def unmap_call(disk: Disk, extents: list[tuple[int, int]]) -> object:
    params = cdb.unmap_parameter_list(extents)
    return execute(cdb.unmap(len(params)), disk, data_out=params)


def test_unmap() -> None:
    assert unmap_call(THIN, [(0, 0)]) == GOOD
    assert unmap_call(THIN, [(N, 0)]) == GOOD
    assert unmap_call(THIN, []) == GOOD
    assert unmap_call(THIN, [(i // 2, 0) for i in range(256)]) == GOOD
    assert unmap_call(THIN, [(0, 3), (N - 1, 1)]) == UnmapPlan((Extent(0, 3), Extent(N - 1, 1)))
    assert sense_of(unmap_call(THIN, [(N, 1)])) == OOB
    assert sense_of(unmap_call(THIN, [(i, 1) for i in range(257)])) == (ILLEGAL, 0x2600)
    assert execute(cdb.unmap(0), THIN) == GOOD
    assert sense_of(execute(cdb.unmap(4), THIN, data_out=bytes(4))) == (ILLEGAL, 0x1A00)
    assert sense_of(execute(cdb.unmap(24), THICK)) == BAD_OPCODE
    assert data_out_length(cdb.unmap(24), THIN) == 24
    assert data_out_length(cdb.unmap(24), THICK) == 0


def test_unmap_lba_count_limit() -> None:
    disk = Disk(num_blocks=N, serial="S", max_unmap_blocks=100)
    assert isinstance(unmap_call(disk, [(0, 60), (100, 40)]), UnmapPlan)
    out = unmap_call(disk, [(0, 60), (100, 41)])
    assert sense_of(out) == (ILLEGAL, 0x2600)
    assert isinstance(out, Reply) and not parse_sense(out.sense).in_cdb


# COMPARE AND WRITE / ORWRITE ---------------------------------------------------

def caw(lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQBBBBBB", Op.COMPARE_AND_WRITE, flags, lba, 0, 0, 0, n, 0, 0)


def test_compare_and_write() -> None:
    assert execute(caw(0, 1, 0x18), THIN) == CompareAndWritePlan(0, 1, True)
    assert execute(caw(N - 255, 255), THIN) == CompareAndWritePlan(N - 255, 255, False)
    assert data_out_length(caw(0, 3), THIN) == 3 * 2 * 512
    assert sense_of(execute(caw(N, 1), THIN)) == OOB
    limited = Disk(num_blocks=N, serial="S", max_compare_blocks=1)
    assert sense_of(execute(caw(0, 2), limited)) == BAD_FIELD
    # an initiator asking for 256 blocks sends 0 in the 8-bit field, and 512 blocks of data
    assert sense_of(execute(caw(0, 0), THIN, edtl=512 * 512)) == BAD_FIELD
    assert execute(caw(0, 0), THIN, edtl=0) == GOOD


def test_orwrite() -> None:
    assert execute(rw16(Op.ORWRITE_16, 7, 2), THIN) == OrWritePlan(7, 2, False)
    assert sense_of(execute(rw16(Op.ORWRITE_16, N - 1, 2), THIN)) == OOB
    assert sense_of(execute(rw16(Op.ORWRITE_16, 0, 1, 0x20), THIN)) == BAD_FIELD


# SYNC / PREFETCH / START STOP / TUR ------------------------------------------

def test_sync_prefetch_and_friends() -> None:
    assert execute(rw10(Op.SYNCHRONIZE_CACHE_10, 0, 0, 0x02), THIN) == SyncPlan()
    assert sense_of(execute(rw10(Op.SYNCHRONIZE_CACHE_10, N + 1, 0), THIN)) == OOB
    assert execute(rw10(Op.PRE_FETCH_10, N - 256, 256, 0x02), THIN) == GOOD
    assert sense_of(execute(rw16(Op.PRE_FETCH_16, N + 1, 0), THIN)) == OOB
    assert sense_of(execute(rw10(Op.PRE_FETCH_10, 0x80000000, 1), THIN)) == OOB
    assert execute(cdb.test_unit_ready(), THIN) == GOOD
    ssu = bytes((Op.START_STOP_UNIT, 0, 0, 0, 0, 0))
    assert execute(ssu, THIN) == SyncPlan()  # stop: flush first
    assert execute(ssu[:4] + b"\x04\x00", THIN) == GOOD  # NO_FLUSH
    assert execute(ssu[:4] + b"\x01\x00", THIN) == GOOD  # start
    assert sense_of(execute(ssu[:4] + b"\x02\x00", THIN)) == BAD_FIELD  # LOEJ


def test_naca_is_refused() -> None:
    c = bytearray(rw10(Op.READ_10, 0, 1))
    c[9] = 0x04
    assert sense_of(execute(bytes(c), THIN)) == BAD_FIELD


def test_unknown_opcodes_and_service_actions() -> None:
    for op in (0x01, 0x86, 0xA2, 0x1E):
        assert sense_of(execute(bytes((op,)) + bytes(15), THIN)) == BAD_OPCODE
    out = execute(bytes((0x9E, 0x1F)) + bytes(14), THIN)
    assert sense_of(out) == BAD_FIELD
    assert parse_sense(out.sense).field == 1  # type: ignore[union-attr]
    assert sense_of(execute(b"", THIN)) == BAD_OPCODE
    assert sense_of(execute(bytes((Op.READ_16,)) + bytes(8), THIN)) == BAD_FIELD  # short CDB


# INQUIRY ---------------------------------------------------------------------

def test_standard_inquiry_fields() -> None:
    data = data_of(execute(cdb.inquiry(260), THIN))
    assert len(data) == 96 and data[4] == 91
    assert data[0] == 0 and data[2] == 6 and data[3] & 0x0F == 2 and not data[3] & 0xC0
    assert all(c == 0x20 or 0x21 <= c <= 0x7E for c in data[8:36])
    for n in (5, 36, 255):
        assert data_of(execute(cdb.inquiry(n), THIN)) == data[:n]
    assert data_of(execute(cdb.inquiry(511), THIN)) == data_of(execute(cdb.inquiry(512), THIN))
    assert data_in_length(cdb.inquiry(300), THIN) == 300


def test_inquiry_evpd_errors() -> None:
    out = execute(struct.pack(">BBBHB", Op.INQUIRY, 0, 1, 256, 0), THIN)
    assert sense_of(out) == BAD_FIELD and parse_sense(out.sense).field == 2  # type: ignore[union-attr]
    assert sense_of(execute(cdb.inquiry(255, 0x86), THIN)) == BAD_FIELD
    assert sense_of(execute(cdb.inquiry(255, 0xB2), THICK)) == BAD_FIELD


def test_every_listed_vpd_page_reads_with_exact_length() -> None:
    for disk in (THIN, THICK):
        listed = cdb.parse_supported_vpd_pages(data_of(execute(cdb.inquiry(255, 0), disk)))
        for page in listed:
            data = data_of(execute(cdb.inquiry(255, page), disk))
            assert data[1] == page
            assert len(data) == int.from_bytes(data[2:4], "big") + 4


def test_block_limits_page() -> None:
    bl = data_of(execute(cdb.inquiry(255, 0xB0), THIN))
    assert bl[3] == 0x3C and len(bl) == 64
    assert bl[4] & 1 == 0  # WSNZ
    assert bl[5] == 255  # MAXIMUM COMPARE AND WRITE LENGTH
    max_unmap, max_bdc = struct.unpack_from(">II", bl, 20)
    assert 0 < max_unmap <= 1 << 20 and 0 < max_bdc <= 1 << 20
    assert struct.unpack_from(">Q", bl, 36)[0] == THIN.max_write_same_blocks
    thick = data_of(execute(cdb.inquiry(255, 0xB0), THICK))
    assert struct.unpack_from(">II", thick, 20) == (0, 0)


def test_thin_provisioning_is_consistent() -> None:
    lbp = data_of(execute(cdb.inquiry(255, 0xB2), THIN))
    assert lbp[5] & 0xE4 == 0xE4  # LBPU, LBPWS, LBPWS10, LBPRZ
    assert not lbp[5] & 0x02  # ANC_SUP
    rc16 = cdb.parse_read_capacity_16(data_of(execute(cdb.read_capacity_16(), THIN)))
    assert rc16.lbpme and rc16.lbprz and rc16.lbppbe == 0
    assert not cdb.parse_read_capacity_16(data_of(execute(cdb.read_capacity_16(), THICK))).lbpme


# READ CAPACITY ------------------------------------------------------------------

def test_read_capacity() -> None:
    assert data_of(execute(cdb.read_capacity_10(), BIG)) == struct.pack(">II", 0xFFFFFFFF, 4096)
    rc16 = data_of(execute(cdb.read_capacity_16(32), BIG))
    assert struct.unpack_from(">QI", rc16) == ((1 << 40) - 1, 4096)
    assert rc16[12] == 0  # PROT_EN, P_TYPE
    for n in range(16):
        assert data_of(execute(cdb.read_capacity_16(n), THIN)) == data_of(
            execute(cdb.read_capacity_16(32), THIN))[:n]
    c = bytearray(cdb.read_capacity_10())
    c[5] = 1
    assert sense_of(execute(bytes(c), THIN)) == BAD_FIELD  # LBA without PMI


def test_get_lba_status() -> None:
    c = struct.pack(">BBQIBB", 0x9E, 0x12, 100, 24, 0, 0)
    assert execute(c, THIN) == LbaStatusPlan(100, 24)  # the backing store knows the rest
    assert execute(struct.pack(">BBQIBB", 0x9E, 0x12, 7, 4096, 0, 0), THIN) == LbaStatusPlan(7, 24)
    assert data_in_length(struct.pack(">BBQIBB", 0x9E, 0x12, 0, 4096, 0, 0), THIN) == 24
    assert execute(struct.pack(">BBQIBB", 0x9E, 0x12, 100, 0, 0, 0), THIN) == Reply()
    for lba in (N, N + 1, 2**63, 2**64 - 1):
        assert sense_of(execute(struct.pack(">BBQIBB", 0x9E, 0x12, lba, 24, 0, 0), THIN)) == OOB


# MODE SENSE -------------------------------------------------------------------

def test_mode_sense_all_pages_and_single() -> None:
    all6 = data_of(execute(cdb.mode_sense_6(0x3F), THIN))
    assert all6[0] == len(all6) - 1 and all6[2] == 0x10 and all6[3] == 8
    assert struct.unpack_from(">II", all6, 4) == (N, 512)
    pages = all6[12:]
    codes = []
    while pages:
        codes.append(pages[0] & 0x3F)
        pages = pages[2 + pages[1]:]
    assert codes == [0x08, 0x0A, 0x1C]
    control = data_of(execute(cdb.mode_sense_6(0x0A, dbd=True), THIN))
    assert control[3] == 0 and control[4:] == all6[12 + 20:12 + 32]
    assert control[4 + 2] & 0x04 == 0  # D_SENSE clear: fixed sense
    assert data_of(execute(cdb.mode_sense_6(0x3F, allocation_length=4), THIN)) == all6[:4]
    caching = data_of(execute(cdb.mode_sense_6(0x08, dbd=True), THIN))
    assert caching[4 + 2] & 0x04  # WCE
    no_wce = data_of(execute(cdb.mode_sense_6(0x08, dbd=True), THICK))
    assert not no_wce[4 + 2] & 0x04


def test_mode_sense_page_control() -> None:
    changeable = data_of(execute(cdb.mode_sense_6(0x0A, pc=1, dbd=True), THIN))
    # Only SWP is changeable, and only on a unit its configuration left writable.
    assert changeable[4] == 0x0A and changeable[8] == 0x08 and not any(changeable[9:])
    fixed = data_of(execute(cdb.mode_sense_6(0x0A, pc=1, dbd=True), RO))
    assert not any(fixed[6:])
    assert data_of(execute(cdb.mode_sense_6(0x3F, pc=2), THIN)) == data_of(
        execute(cdb.mode_sense_6(0x3F), THIN))
    assert sense_of(execute(cdb.mode_sense_6(0x3F, pc=3), THIN)) == (ILLEGAL, 0x3900)
    assert sense_of(execute(cdb.mode_sense_6(0x19), THIN)) == BAD_FIELD
    assert sense_of(execute(cdb.mode_sense_6(0x08, subpage=1), THIN)) == BAD_FIELD
    assert data_of(execute(cdb.mode_sense_10(0x3F, subpage=0xFF), THIN))


def test_mode_sense_10_long_descriptor() -> None:
    data = data_of(execute(cdb.mode_sense_10(0x08, llbaa=True), BIG))
    assert data[4] & 1 and struct.unpack_from(">H", data, 6)[0] == 16
    assert struct.unpack_from(">QII", data, 8) == (1 << 40, 0, 4096)
    short = data_of(execute(cdb.mode_sense_10(0x08), BIG))
    assert struct.unpack_from(">II", short, 8) == (0xFFFFFFFF, 4096)


# REPORT LUNS / REQUEST SENSE / READ DEFECT DATA / missing LUN ----------------------

def test_report_luns() -> None:
    data = data_of(execute(cdb.report_luns(), THIN, luns=[3, 0]))
    assert data[:8] == struct.pack(">II", 16, 0) and cdb.parse_report_luns(data) == [0, 3]
    assert cdb.parse_report_luns(data_of(execute(cdb.report_luns(select_report=1), THIN))) == []
    assert sense_of(execute(cdb.report_luns(select_report=7), THIN)) == BAD_FIELD
    assert sense_of(execute(cdb.report_luns(allocation_length=15), THIN)) == BAD_FIELD


def test_request_sense_has_nothing_pending() -> None:
    fixed = data_of(execute(bytes((Op.REQUEST_SENSE, 0, 0, 0, 252, 0)), THIN))
    assert len(fixed) == 18 and parse_sense(fixed).key == SenseKey.NO_SENSE
    desc = data_of(execute(bytes((Op.REQUEST_SENSE, 1, 0, 0, 252, 0)), THIN))
    assert desc[0] == 0x72


def test_read_defect_data_is_empty() -> None:
    d10 = data_of(execute(bytes((0x37, 0, 0x18, 0, 0, 0, 0, 0, 32, 0)), THIN))
    assert d10 == bytes((0, 0x18, 0, 0))
    d12 = data_of(execute(bytes((0xB7, 0x0D)) + bytes(4) + (32).to_bytes(4, "big") + bytes(2),
                          THIN))
    assert d12 == bytes((0, 0x0D)) + bytes(6)


def test_missing_lun() -> None:
    inq = execute_without_lun(cdb.inquiry(), [0, 1])
    assert inq.status == 0 and inq.data[0] == 0x7F
    assert cdb.parse_report_luns(execute_without_lun(cdb.report_luns(), [1, 0]).data) == [0, 1]
    assert sense_of(execute_without_lun(cdb.test_unit_ready(), [0])) == (ILLEGAL, 0x2500)
    rs = execute_without_lun(bytes((Op.REQUEST_SENSE, 0, 0, 0, 18, 0)), [0])
    assert parse_sense(rs.data).code == 0x2500


# REPORT SUPPORTED OPERATION CODES -----------------------------------------------

def rsoc_cdb(option: int, opcode: int = 0, sa: int = 0, rctd: bool = False,
             alloc: int = 65535) -> bytes:
    return struct.pack(">BBBBHIBB", 0xA3, 0x0C, option | (0x80 if rctd else 0), opcode, sa,
                       alloc, 0, 0)


def all_descriptors(disk: Disk, rctd: bool = False) -> list[tuple[int, int, int, int]]:
    data = data_of(execute(rsoc_cdb(0, rctd=rctd), disk))
    length = struct.unpack_from(">I", data)[0]
    assert length == len(data) - 4
    out, pos = [], 4
    while pos < len(data):
        op, _, sa, _, flags, cdb_len = struct.unpack_from(">BBHBBH", data, pos)
        out.append((op, sa, flags, cdb_len))
        pos += 8
        if flags & 0x02:
            assert struct.unpack_from(">H", data, pos)[0] == 0x0A
            pos += 12
    return out


def test_rsoc_all_and_one_command_agree() -> None:
    descriptors = all_descriptors(THIN)
    ops = {d[0] for d in descriptors}
    assert {0x28, 0x2A, 0x88, 0x8A, 0x12, 0x42, 0x9E, 0xA3, 0xA0} <= ops
    assert 0x42 not in {d[0] for d in all_descriptors(THICK)}
    for op, sa, flags, cdb_len in descriptors:
        servactv = bool(flags & 0x01)
        assert servactv or sa == 0
        with_sa = execute(rsoc_cdb(2, op, sa), THIN)
        without = execute(rsoc_cdb(1, op, sa), THIN)
        good = with_sa if servactv else without
        assert sense_of(without if servactv else with_sa) == BAD_FIELD
        one = data_of(good)
        assert one[1] & 0x07 == 3 and struct.unpack_from(">H", one, 2)[0] == cdb_len
        assert one[4] == op and len(one) == 4 + cdb_len
        probe = execute(bytes((op, sa if servactv else 0)) + bytes(cdb_len - 2), THIN)
        if isinstance(probe, Reply) and probe.status:
            assert sense_of(probe)[1] != 0x2000  # listed means dispatched
            assert parse_sense(probe.sense).field != 1 or not servactv
    assert all(d[2] & 0x02 for d in all_descriptors(THIN, rctd=True))
    assert not any(d[2] & 0x02 for d in descriptors)


def test_rsoc_dpofua_usage_bits() -> None:
    for op in (0x28, 0x2A, 0x88, 0x8A, 0x89):
        assert data_of(execute(rsoc_cdb(1, op), THIN))[5] & 0x18 == 0x18
    for op in (0x2E, 0x2F):
        assert data_of(execute(rsoc_cdb(1, op), THIN))[5] & 0x10


def test_rsoc_unsupported_and_timeouts() -> None:
    assert data_of(execute(rsoc_cdb(1, 0x01), THIN)) == bytes((0, 1, 0, 0))
    assert data_of(execute(rsoc_cdb(2, 0x9E, 0x1F), THIN)) == bytes((0, 1, 0, 0))
    one = data_of(execute(rsoc_cdb(1, 0x28, rctd=True), THIN))
    assert one[1] & 0x80 and struct.unpack_from(">H", one, 4 + 10)[0] == 0x0A
    assert sense_of(execute(rsoc_cdb(5, 0x28), THIN)) == BAD_FIELD
    assert len(data_of(execute(rsoc_cdb(0, alloc=20), THIN))) == 20


# Admission lengths and robustness -----------------------------------------------

def test_admission_lengths() -> None:
    assert data_in_length(rw10(Op.READ_10, 0, 8), BIG) == 8 * 4096
    assert data_in_length(bytes((Op.READ_6, 0, 0, 0, 0, 0)), THIN) == 256 * 512
    assert data_out_length(rw16(Op.WRITE_16, 0, 3), THIN) == 3 * 512
    assert data_in_length(rw16(Op.WRITE_16, 0, 3), THIN) == 0
    assert data_in_length(cdb.read_capacity_10(), THIN) == 8
    assert data_in_length(cdb.read_capacity_16(32), THIN) == 32
    assert data_in_length(cdb.report_luns(999), THIN) == 999
    assert data_in_length(cdb.mode_sense_10(0x3F, allocation_length=300), THIN) == 300
    assert data_in_length(b"", THIN) == 0
    assert data_in_length(bytes((Op.READ_16, 0, 0)), THIN) == 0
    assert data_out_length(bytes((0xFF,)) * 16, THIN) == 0


_OUTCOMES = (Reply, ReadPlan, WritePlan, WriteSamePlan, UnmapPlan, SyncPlan, VerifyPlan,
             CompareAndWritePlan, OrWritePlan, SanitizePlan, LbaStatusPlan)
_KNOWN = [int(o) for o in cdb.Opcode]


@settings(max_examples=3000)
@given(
    st.one_of(
        st.binary(max_size=20),
        st.builds(lambda op, rest: bytes((op,)) + rest, st.sampled_from(_KNOWN),
                  st.binary(min_size=0, max_size=16)),
    ),
    st.sampled_from([THIN, THICK, RO, BIG]),
    st.binary(max_size=64),
    st.one_of(st.none(), st.integers(0, 1 << 20)),
)
def test_random_cdbs_never_raise(cdb_bytes: bytes, disk: Disk, data_out: bytes,
                                 edtl: int | None) -> None:
    out = execute(cdb_bytes, disk, data_out=data_out, edtl=edtl)
    assert isinstance(out, _OUTCOMES)
    if isinstance(out, Reply) and out.status == ScsiStatus.CHECK_CONDITION:
        parse_sense(out.sense)
    elif isinstance(out, LbaStatusPlan):
        assert out.lba < disk.num_blocks and 0 < out.length <= 24
    elif isinstance(out, SanitizePlan):
        assert not disk.read_only and (out.overwrite or disk.thin_provisioning)
    elif not isinstance(out, Reply | SyncPlan | UnmapPlan):
        assert out.nblocks > 0 and out.lba + out.nblocks <= disk.num_blocks
    assert data_in_length(cdb_bytes, disk) >= 0
    assert data_out_length(cdb_bytes, disk) >= 0
