"""Operation codes, CDB builders and reply parsers: the initiator's half of the SCSI layer.

Builders return the CDB bytes only; how many bytes will move is the caller's to
know (it asked for them), and the target recomputes it from the CDB anyway.
Parsers take the Data-In bytes of a GOOD reply and raise MalformedReply when they
are too short to hold what the reply format promises.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from .lun import lun_from_u64


class Opcode(IntEnum):
    TEST_UNIT_READY = 0x00
    REQUEST_SENSE = 0x03
    READ_6 = 0x08
    WRITE_6 = 0x0A
    INQUIRY = 0x12
    MODE_SELECT_6 = 0x15
    RESERVE_6 = 0x16
    RELEASE_6 = 0x17
    MODE_SENSE_6 = 0x1A
    START_STOP_UNIT = 0x1B
    PREVENT_ALLOW_MEDIUM_REMOVAL = 0x1E
    READ_CAPACITY_10 = 0x25
    READ_10 = 0x28
    WRITE_10 = 0x2A
    WRITE_AND_VERIFY_10 = 0x2E
    VERIFY_10 = 0x2F
    PRE_FETCH_10 = 0x34
    SYNCHRONIZE_CACHE_10 = 0x35
    READ_DEFECT_DATA_10 = 0x37
    WRITE_SAME_10 = 0x41
    UNMAP = 0x42
    SANITIZE = 0x48
    MODE_SELECT_10 = 0x55
    MODE_SENSE_10 = 0x5A
    PERSISTENT_RESERVE_IN = 0x5E
    PERSISTENT_RESERVE_OUT = 0x5F
    EXTENDED_COPY = 0x83
    RECEIVE_COPY_RESULTS = 0x84
    READ_16 = 0x88
    COMPARE_AND_WRITE = 0x89
    WRITE_16 = 0x8A
    ORWRITE_16 = 0x8B
    WRITE_AND_VERIFY_16 = 0x8E
    VERIFY_16 = 0x8F
    PRE_FETCH_16 = 0x90
    SYNCHRONIZE_CACHE_16 = 0x91
    WRITE_SAME_16 = 0x93
    WRITE_ATOMIC_16 = 0x9C
    SERVICE_ACTION_IN_16 = 0x9E
    REPORT_LUNS = 0xA0
    MAINTENANCE_IN = 0xA3
    READ_12 = 0xA8
    WRITE_12 = 0xAA
    WRITE_AND_VERIFY_12 = 0xAE
    VERIFY_12 = 0xAF
    READ_DEFECT_DATA_12 = 0xB7


class ServiceAction(IntEnum):
    READ_CAPACITY_16 = 0x10  # of SERVICE ACTION IN (16)
    GET_LBA_STATUS = 0x12  # of SERVICE ACTION IN (16)
    REPORT_SUPPORTED_OPERATION_CODES = 0x0C  # of MAINTENANCE IN
    EXTENDED_COPY_LID1 = 0x00  # of EXTENDED COPY


class SanitizeAction(IntEnum):
    """SANITIZE's service actions (SBC-4 5.30)."""

    OVERWRITE = 0x01
    BLOCK_ERASE = 0x02
    CRYPTO_ERASE = 0x03
    EXIT_FAILURE_MODE = 0x1F


class VpdPage(IntEnum):
    SUPPORTED_PAGES = 0x00
    UNIT_SERIAL_NUMBER = 0x80
    DEVICE_IDENTIFICATION = 0x83
    BLOCK_LIMITS = 0xB0
    BLOCK_DEVICE_CHARACTERISTICS = 0xB1
    LOGICAL_BLOCK_PROVISIONING = 0xB2


class MalformedReply(ValueError):
    """Data-In too short or inconsistent for the reply format it should be in."""


_RW10 = struct.Struct(">BBIBHB")
_RW16 = struct.Struct(">BBQIBB")
_FUA = 0x08
# Plain ints for the per-I/O builders: packing an IntEnum member costs an __index__ call.
_READ_16 = int(Opcode.READ_16)
_WRITE_16 = int(Opcode.WRITE_16)


def test_unit_ready() -> bytes:
    return bytes(6)


def inquiry(allocation_length: int = 96, page: int | None = None) -> bytes:
    """Standard INQUIRY, or the VPD page `page` (EVPD=1)."""
    evpd, code = (0, 0) if page is None else (1, page)
    return struct.pack(">BBBHB", Opcode.INQUIRY, evpd, code, allocation_length, 0)


def read_capacity_10() -> bytes:
    return bytes((Opcode.READ_CAPACITY_10,)) + bytes(9)


def read_capacity_16(allocation_length: int = 32) -> bytes:
    return struct.pack(
        ">BBQIBB",
        Opcode.SERVICE_ACTION_IN_16,
        ServiceAction.READ_CAPACITY_16,
        0,
        allocation_length,
        0,
        0,
    )


def read_10(lba: int, nblocks: int, *, fua: bool = False) -> bytes:
    return _RW10.pack(Opcode.READ_10, _FUA if fua else 0, lba, 0, nblocks, 0)


def write_10(lba: int, nblocks: int, *, fua: bool = False) -> bytes:
    return _RW10.pack(Opcode.WRITE_10, _FUA if fua else 0, lba, 0, nblocks, 0)


def read_16(lba: int, nblocks: int, *, fua: bool = False) -> bytes:
    return _RW16.pack(_READ_16, _FUA if fua else 0, lba, nblocks, 0, 0)


def write_16(lba: int, nblocks: int, *, fua: bool = False) -> bytes:
    return _RW16.pack(_WRITE_16, _FUA if fua else 0, lba, nblocks, 0, 0)


def synchronize_cache_10(lba: int = 0, nblocks: int = 0) -> bytes:
    """Zero blocks means "from lba to the end of the medium"."""
    return _RW10.pack(Opcode.SYNCHRONIZE_CACHE_10, 0, lba, 0, nblocks, 0)


def synchronize_cache_16(lba: int = 0, nblocks: int = 0) -> bytes:
    return _RW16.pack(Opcode.SYNCHRONIZE_CACHE_16, 0, lba, nblocks, 0, 0)


def write_same_16(lba: int, nblocks: int, *, unmap: bool = False, ndob: bool = False) -> bytes:
    flags = (0x08 if unmap else 0) | (0x01 if ndob else 0)
    return _RW16.pack(Opcode.WRITE_SAME_16, flags, lba, nblocks, 0, 0)


def unmap(parameter_list_length: int) -> bytes:
    return struct.pack(">BBIBHB", Opcode.UNMAP, 0, 0, 0, parameter_list_length, 0)


def unmap_parameter_list(extents: Iterable[tuple[int, int]]) -> bytes:
    """The UNMAP parameter list (SBC-4 5.32.2) for (lba, nblocks) extents."""
    descriptors = b"".join(struct.pack(">QII", lba, n, 0) for lba, n in extents)
    return struct.pack(">HHI", 6 + len(descriptors), len(descriptors), 0) + descriptors


def report_luns(allocation_length: int = 4096, select_report: int = 0) -> bytes:
    return struct.pack(">BBBHBIBB", Opcode.REPORT_LUNS, 0, select_report, 0, 0,
                       allocation_length, 0, 0)


def mode_sense_6(page: int, *, subpage: int = 0, pc: int = 0, dbd: bool = False,
                 allocation_length: int = 255) -> bytes:
    return bytes((Opcode.MODE_SENSE_6, 0x08 if dbd else 0, (pc << 6) | page, subpage,
                  allocation_length, 0))


def mode_sense_10(page: int, *, subpage: int = 0, pc: int = 0, dbd: bool = False,
                  llbaa: bool = False, allocation_length: int = 4096) -> bytes:
    flags = (0x08 if dbd else 0) | (0x10 if llbaa else 0)
    return struct.pack(">BBBBBBBHB", Opcode.MODE_SENSE_10, flags, (pc << 6) | page, subpage,
                       0, 0, 0, allocation_length, 0)


@dataclass(slots=True, frozen=True)
class StandardInquiry:
    qualifier: int
    device_type: int
    removable: bool
    version: int
    response_data_format: int
    vendor: str
    product: str
    revision: str
    protect: bool
    version_descriptors: tuple[int, ...]


def parse_standard_inquiry(data: bytes | memoryview) -> StandardInquiry:
    if len(data) < 36:
        raise MalformedReply(f"standard INQUIRY data is {len(data)} bytes, needs 36")
    b = bytes(data)
    raw = b[58:74]
    descriptors = tuple(
        d for d in (int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw) - 1, 2)) if d
    )
    return StandardInquiry(
        qualifier=b[0] >> 5,
        device_type=b[0] & 0x1F,
        removable=bool(b[1] & 0x80),
        version=b[2],
        response_data_format=b[3] & 0x0F,
        vendor=b[8:16].decode("ascii", "replace").rstrip(),
        product=b[16:32].decode("ascii", "replace").rstrip(),
        revision=b[32:36].decode("ascii", "replace").rstrip(),
        protect=bool(b[5] & 0x01),
        version_descriptors=descriptors,
    )


@dataclass(slots=True, frozen=True)
class Capacity:
    """READ CAPACITY data; the thin-provisioning fields come from the 16-byte form only."""

    num_blocks: int
    block_size: int
    lbpme: bool = False
    lbprz: bool = False
    lbppbe: int = 0


def parse_read_capacity_10(data: bytes | memoryview) -> Capacity:
    if len(data) < 8:
        raise MalformedReply(f"READ CAPACITY (10) data is {len(data)} bytes, needs 8")
    last, size = struct.unpack_from(">II", data)
    return Capacity(last + 1, size)


def parse_read_capacity_16(data: bytes | memoryview) -> Capacity:
    if len(data) < 16:
        raise MalformedReply(f"READ CAPACITY (16) data is {len(data)} bytes, needs 16")
    last, size, _, exponents, flags = struct.unpack_from(">QIBBB", data)
    return Capacity(last + 1, size, bool(flags & 0x80), bool(flags & 0x40), exponents & 0x0F)


def parse_report_luns(data: bytes | memoryview) -> list[int]:
    """LUN numbers from REPORT LUNS data (peripheral and flat-space addressing).

    Entries in other addressing methods are returned as -1 - (their 64-bit value),
    so they stay distinct and never collide with a real LUN number.
    """
    if len(data) < 8:
        raise MalformedReply(f"REPORT LUNS data is {len(data)} bytes, needs 8")
    (length,) = struct.unpack_from(">I", data)
    end = min(len(data), 8 + length)
    return [lun_from_u64(int.from_bytes(data[pos:pos + 8], "big"))
            for pos in range(8, end - 7, 8)]


@dataclass(slots=True, frozen=True)
class Designator:
    """One designation descriptor of VPD page 0x83 (SPC-4 7.8.6)."""

    protocol_id: int
    code_set: int
    piv: bool
    association: int
    designator_type: int
    value: bytes


def parse_device_identification(data: bytes | memoryview) -> list[Designator]:
    if len(data) < 4 or data[1] != VpdPage.DEVICE_IDENTIFICATION:
        raise MalformedReply("not a DEVICE IDENTIFICATION VPD page")
    end = min(len(data), 4 + int.from_bytes(data[2:4], "big"))
    out: list[Designator] = []
    pos = 4
    while pos + 4 <= end:
        length = data[pos + 3]
        if pos + 4 + length > end:
            raise MalformedReply(f"designator at offset {pos} runs past the page end")
        out.append(Designator(
            protocol_id=data[pos] >> 4,
            code_set=data[pos] & 0x0F,
            piv=bool(data[pos + 1] & 0x80),
            association=(data[pos + 1] >> 4) & 3,
            designator_type=data[pos + 1] & 0x0F,
            value=bytes(data[pos + 4:pos + 4 + length]),
        ))
        pos += 4 + length
    return out


def parse_supported_vpd_pages(data: bytes | memoryview) -> list[int]:
    if len(data) < 4 or data[1] != VpdPage.SUPPORTED_PAGES:
        raise MalformedReply("not a SUPPORTED VPD PAGES page")
    return list(data[4:4 + int.from_bytes(data[2:4], "big")])
