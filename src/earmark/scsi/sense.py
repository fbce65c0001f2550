"""Status codes and sense data (SPC-4 4.5), and the one error type the SCSI layer raises.

The target answers every failed command with CHECK CONDITION and fixed-format sense
(response code 0x70), because that is what the control mode page says (D_SENSE=0)
and what every initiator parses. The initiator must parse both fixed and descriptor
format, since other targets (tgtd with D_SENSE set, or REQUEST SENSE with DESC=1)
send the latter.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum


class SenseKey(IntEnum):
    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    VENDOR_SPECIFIC = 0x9
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    VOLUME_OVERFLOW = 0xD
    MISCOMPARE = 0xE
    COMPLETED = 0xF
    EQUAL = 0xC  # obsolete since SPC-3, kept so that every 4-bit value parses


class ScsiStatus(IntEnum):
    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40


class Asc(IntEnum):
    """Additional sense code and qualifier, as one 16-bit number (ASC << 8 | ASCQ)."""

    NO_ADDITIONAL_SENSE = 0x0000
    LOGICAL_UNIT_NOT_READY = 0x0400
    SANITIZE_IN_PROGRESS = 0x041B
    WRITE_ERROR = 0x0C00
    INVALID_FIELD_IN_INFORMATION_UNIT = 0x0E03
    UNRECOVERED_READ_ERROR = 0x1100
    PARAMETER_LIST_LENGTH_ERROR = 0x1A00
    MISCOMPARE_DURING_VERIFY_OPERATION = 0x1D00
    INVALID_COMMAND_OPERATION_CODE = 0x2000
    LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE = 0x2100
    INVALID_FIELD_IN_CDB = 0x2400
    LOGICAL_UNIT_NOT_SUPPORTED = 0x2500
    INVALID_FIELD_IN_PARAMETER_LIST = 0x2600
    WRITE_PROTECTED = 0x2700
    POWER_ON_OR_RESET_OCCURRED = 0x2900
    POWER_ON_OCCURRED = 0x2901
    DEVICE_INTERNAL_RESET = 0x2904
    PARAMETERS_CHANGED = 0x2A00
    CAPACITY_DATA_HAS_CHANGED = 0x2A09
    COMMANDS_CLEARED_BY_ANOTHER_INITIATOR = 0x2F00
    SAVING_PARAMETERS_NOT_SUPPORTED = 0x3900
    MEDIUM_NOT_PRESENT = 0x3A00
    REPORTED_LUNS_DATA_HAS_CHANGED = 0x3F0E
    INTERNAL_TARGET_FAILURE = 0x4400
    PROTOCOL_SERVICE_CRC_ERROR = 0x4705
    INITIATOR_DETECTED_ERROR = 0x4800
    COMMAND_PHASE_ERROR = 0x4A00
    DATA_PHASE_ERROR = 0x4B00
    OVERLAPPED_COMMANDS_ATTEMPTED = 0x4E00
    SPACE_ALLOCATION_FAILED_WRITE_PROTECT = 0x2707
    THIN_PROVISIONING_SOFT_THRESHOLD_REACHED = 0x3807


def asc_words(code: int) -> str:
    """Name an ASC/ASCQ in the words of SPC-4 annex D, or give its numbers."""
    try:
        return Asc(code).name.replace("_", " ")
    except ValueError:
        return f"ASC 0x{code >> 8:02x} ASCQ 0x{code & 0xFF:02x}"


FIXED_CURRENT = 0x70
FIXED_DEFERRED = 0x71
DESCRIPTOR_CURRENT = 0x72
DESCRIPTOR_DEFERRED = 0x73
FIXED_SENSE_LENGTH = 18
_SKSV = 0x80
_CD = 0x40
_BPV = 0x08


class ScsiError(Exception):
    """A command that ends in CHECK CONDITION; it carries everything the sense data says.

    `field` is the byte of the CDB (or of the parameter list, when `in_cdb` is False)
    that holds the offending field and `bit` its highest bit: SPC-4 4.5.2.4.2 calls
    them the field pointer and bit pointer, and initiators (libiscsi among them) read
    them to tell "this service action is not implemented" from a real mistake.
    """

    def __init__(
        self,
        key: SenseKey,
        asc: int,
        ascq: int,
        *,
        field: int | None = None,
        bit: int | None = None,
        in_cdb: bool = True,
        information: int | None = None,
    ) -> None:
        self.key = key
        self.asc = asc
        self.ascq = ascq
        self.field = field
        self.bit = bit
        self.in_cdb = in_cdb
        self.information = information
        super().__init__(str(self))

    @property
    def code(self) -> int:
        return self.asc << 8 | self.ascq

    def __str__(self) -> str:
        words = asc_words(self.code)
        return f"{self.key.name.replace('_', ' ')}: {words} (0x{self.key:02x}/0x{self.code:04x})"

    def sense(self) -> bytes:
        """Fixed-format sense data for this error (what a target sends)."""
        sks = None
        if self.field is not None:
            sks = _CD if self.in_cdb else 0
            if self.bit is not None:
                sks |= _BPV | (self.bit & 7)
            sks = (sks << 16) | (self.field & 0xFFFF)
        return build_fixed_sense(self.key, self.code, information=self.information, sks=sks)


_FIXED = struct.Struct(">BBBIBIBBBBH")


def build_fixed_sense(
    key: SenseKey, code: int, *, information: int | None = None, sks: int | None = None
) -> bytes:
    """Fixed-format sense (SPC-4 4.5.3): 18 bytes, ADDITIONAL SENSE LENGTH 10.

    `sks` is the 23-bit sense-key-specific value; SKSV is set when it is given.
    VALID is set only when there is an INFORMATION value and it fits the 4 bytes that
    fixed format has (a 64-bit LBA may not: then it is left out rather than cut).
    """
    if information is not None and information > 0xFFFFFFFF:
        information = None
    valid = 0x80 if information is not None else 0
    sks_hi, sks_lo = (0, 0) if sks is None else (_SKSV | (sks >> 16) & 0x7F, sks & 0xFFFF)
    return _FIXED.pack(
        valid | FIXED_CURRENT,
        0,
        key & 0x0F,
        (information or 0) & 0xFFFFFFFF,
        FIXED_SENSE_LENGTH - 8,
        0,
        code >> 8,
        code & 0xFF,
        0,
        sks_hi,
        sks_lo,
    )


def build_descriptor_sense(key: SenseKey, code: int) -> bytes:
    """Descriptor-format sense (SPC-4 4.5.2) with no descriptors: for REQUEST SENSE DESC=1."""
    return bytes((DESCRIPTOR_CURRENT, key & 0x0F, code >> 8, code & 0xFF, 0, 0, 0, 0))


class SenseFormatError(ValueError):
    """Bytes that are not sense data in either format SPC-4 defines."""


@dataclass(slots=True, frozen=True)
class SenseData:
    """Sense data as the initiator reads it, whichever format it came in."""

    key: SenseKey
    asc: int
    ascq: int
    deferred: bool = False
    information: int | None = None
    field: int | None = None
    bit: int | None = None
    in_cdb: bool = True

    @property
    def code(self) -> int:
        return self.asc << 8 | self.ascq

    def error(self) -> ScsiError:
        return ScsiError(
            self.key,
            self.asc,
            self.ascq,
            field=self.field,
            bit=self.bit,
            in_cdb=self.in_cdb,
            information=self.information,
        )


def _sks(b0: int, b1: int, b2: int, key: SenseKey) -> tuple[int | None, int | None, bool]:
    """Field/bit pointer, meaningful only for ILLEGAL REQUEST with SKSV set."""
    if not b0 & _SKSV or key != SenseKey.ILLEGAL_REQUEST:
        return None, None, True
    bit = b0 & 7 if b0 & _BPV else None
    return (b1 << 8) | b2, bit, bool(b0 & _CD)


def parse_sense(data: bytes | memoryview) -> SenseData:
    """Parse fixed (0x70/0x71) or descriptor (0x72/0x73) sense data.

    Raises SenseFormatError when the bytes are too short or of another response code.
    """
    if len(data) < 2:
        raise SenseFormatError(f"sense data is {len(data)} bytes, too short")
    response = data[0] & 0x7F
    if response in (FIXED_CURRENT, FIXED_DEFERRED):
        return _parse_fixed(data, response)
    if response in (DESCRIPTOR_CURRENT, DESCRIPTOR_DEFERRED):
        return _parse_descriptor(data, response)
    raise SenseFormatError(f"sense response code 0x{response:02x} is not 0x70-0x73")


def _parse_fixed(data: bytes | memoryview, response: int) -> SenseData:
    if len(data) < 14:
        raise SenseFormatError(f"fixed sense is {len(data)} bytes, needs at least 14")
    key = SenseKey(data[2] & 0x0F)
    information = int.from_bytes(data[3:7], "big") if data[0] & 0x80 else None
    field, bit, in_cdb = (None, None, True)
    if len(data) >= 18 and data[7] >= 10:
        field, bit, in_cdb = _sks(data[15], data[16], data[17], key)
    return SenseData(
        key, data[12], data[13], response == FIXED_DEFERRED, information, field, bit, in_cdb
    )


def _parse_descriptor(data: bytes | memoryview, response: int) -> SenseData:
    if len(data) < 8:
        raise SenseFormatError(f"descriptor sense is {len(data)} bytes, needs at least 8")
    key = SenseKey(data[1] & 0x0F)
    end = min(len(data), 8 + data[7])
    pos = 8
    information: int | None = None
    field, bit, in_cdb = (None, None, True)
    while pos + 2 <= end:
        kind, length = data[pos], data[pos + 1]
        body = data[pos + 2 : min(end, pos + 2 + length)]
        if kind == 0x00 and len(body) >= 10 and body[0] & 0x80:
            information = int.from_bytes(body[2:10], "big")
        elif kind == 0x02 and len(body) >= 5:
            field, bit, in_cdb = _sks(body[2], body[3], body[4], key)
        pos += 2 + length
    return SenseData(
        key, data[2], data[3], response == DESCRIPTOR_DEFERRED, information, field, bit, in_cdb
    )


def invalid_opcode() -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x20, 0x00, field=0, bit=7)


def invalid_field_in_cdb(field: int, bit: int | None = None) -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x24, 0x00, field=field, bit=bit)


def invalid_field_in_parameter_list(field: int, bit: int | None = None) -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x26, 0x00, field=field, bit=bit, in_cdb=False)


def lba_out_of_range() -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x21, 0x00)


def parameter_list_length_error() -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x1A, 0x00)


def saving_parameters_not_supported(field: int, bit: int) -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x39, 0x00, field=field, bit=bit)


def logical_unit_not_supported() -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x25, 0x00)


def write_protected() -> ScsiError:
    return ScsiError(SenseKey.DATA_PROTECT, 0x27, 0x00)


def miscompare(offset: int) -> ScsiError:
    """MISCOMPARE DURING VERIFY: INFORMATION is the offset of the first unequal byte."""
    return ScsiError(SenseKey.MISCOMPARE, 0x1D, 0x00, information=offset)


def unrecovered_read_error(lba: int | None = None) -> ScsiError:
    return ScsiError(SenseKey.MEDIUM_ERROR, 0x11, 0x00, information=lba)


def write_error(lba: int | None = None) -> ScsiError:
    return ScsiError(SenseKey.MEDIUM_ERROR, 0x0C, 0x00, information=lba)


def space_allocation_failed(lba: int | None = None) -> ScsiError:
    """DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT (SBC-4 4.7.3.6): a thin LUN
    whose backing ran out of space. Initiators that know thin provisioning stop writing
    and tell the user, rather than retry a "medium error" or fail the disk."""
    return ScsiError(SenseKey.DATA_PROTECT, 0x27, 0x07, information=lba)


def protocol_crc_error() -> ScsiError:
    """ABORTED COMMAND: the transport lost part of the command's data (a digest error)."""
    return ScsiError(SenseKey.ABORTED_COMMAND, 0x47, 0x05)


def sanitize_in_progress() -> ScsiError:
    return ScsiError(SenseKey.NOT_READY, 0x04, 0x1B)


def medium_removal_prevented() -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x53, 0x02)


def medium_not_present() -> ScsiError:
    return ScsiError(SenseKey.NOT_READY, 0x3A, 0x00)
