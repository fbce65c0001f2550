"""The copy manager: EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18).

An EXTENDED COPY parameter list names copy source and destination devices (CSCD
descriptors) and segments to move between them. Everything it says is checked
here, before a single block moves, so the copy is all or nothing as far as the
parameter list can make it: every CSCD a segment uses must resolve to one of the
target's logical units and every range must fit that unit. What comes out is a
`CopyPlan` naming (LUN, LBA) ranges; the runtime moves them through the command's
reserved buffer, so a copy of any size costs one buffer.

Supported: identification descriptor CSCDs (E4h) that name a logical unit of this
target by a designator of its DEVICE IDENTIFICATION page, and block-device to
block-device segments (02h). Other descriptor types end in UNSUPPORTED ... TYPE
CODE, as SPC-4 6.4.3.5 requires, and OPERATING PARAMETERS lists only these two.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from .disk import Disk
from .inquiry import lu_designators
from .plans import CopyPlan, CopySegment
from .reservations import Nexus
from .sense import (
    ScsiError,
    SenseKey,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    parameter_list_length_error,
)

#: Limits reported by OPERATING PARAMETERS and enforced by `parse`. The descriptor
#: list is bounded so the whole parameter list fits one command buffer: it is
#: parsed at once, and `parameter_list_bytes` never asks the initiator for more.
MAX_CSCD_DESCRIPTORS = 8
MAX_SEGMENT_DESCRIPTORS = 64
IDENTIFICATION_CSCD = 0xE4
BLOCK_TO_BLOCK = 0x02
_HEADER = 16
_CSCD_LENGTH = 32
_B2B_LENGTH = 28
MAX_DESCRIPTOR_LIST = MAX_CSCD_DESCRIPTORS * _CSCD_LENGTH + MAX_SEGMENT_DESCRIPTORS * _B2B_LENGTH
MAX_PARAMETER_LIST = _HEADER + MAX_DESCRIPTOR_LIST
#: At most one copy per list identifier and nexus runs; 255 is the field's maximum.
_MAX_CONCURRENT = 255
_IMPLEMENTED = bytes((BLOCK_TO_BLOCK, IDENTIFICATION_CSCD))
_HEAD = struct.Struct(">BBHIII")
_B2B = struct.Struct(">BBHHHHHQQ")
_U32 = struct.Struct(">I")


class ListIdUsage(IntEnum):
    """LIST ID USAGE (SPC-4 table 113): whether the list identifier is kept, and for what."""

    HOLD = 0
    RESERVED = 1
    NO_HOLD = 2
    NONE = 3


class CopySa(IntEnum):
    """Service actions of RECEIVE COPY RESULTS (opcode 84h) that are implemented."""

    COPY_STATUS = 0x00
    OPERATING_PARAMETERS = 0x03


def copy_aborted(asc: int, ascq: int) -> ScsiError:
    """COPY ABORTED: the copy manager accepted the list but could not do the copy."""
    return ScsiError(SenseKey.COPY_ABORTED, asc, ascq)


def _unreachable() -> ScsiError:
    return copy_aborted(0x0D, 0x02)  # COPY TARGET DEVICE NOT REACHABLE


def _wrong_device() -> ScsiError:
    return copy_aborted(0x0D, 0x03)  # INCORRECT COPY TARGET DEVICE TYPE


def _copy_error(code: int, field: int) -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x26, code, field=field, in_cdb=False)


def parameter_list_bytes(cdb: bytes) -> int:
    """Data-Out to ask for: the CDB's PARAMETER LIST LENGTH, capped at the longest list
    that can be valid (a longer one is refused whole, so its tail is never needed)."""
    return min(int(_U32.unpack_from(cdb, 10)[0]), MAX_PARAMETER_LIST + 1)


def parse(cdb: bytes, params: bytes | memoryview, peers: Mapping[int, Disk]) -> CopyPlan | None:
    """Check an EXTENDED COPY parameter list and resolve it to a plan; None: nothing to do.

    `peers` are the logical units the copy manager reaches (this target's, by LUN).
    Raises ScsiError with the sense SPC-4 prescribes for each mistake.
    """
    length = int(_U32.unpack_from(cdb, 10)[0])
    if length == 0:
        return None  # SPC-4 6.4.1: a zero-length list is not an error
    if length < _HEADER or length > MAX_PARAMETER_LIST or len(params) < min(length, _HEADER):
        raise parameter_list_length_error()
    list_id, flags, cscd_bytes, _, segment_bytes, inline_bytes = _HEAD.unpack_from(params)
    usage = ListIdUsage((flags >> 3) & 3)
    if usage is ListIdUsage.RESERVED:
        raise invalid_field_in_parameter_list(1, 4)
    if usage is ListIdUsage.NONE and list_id:
        raise invalid_field_in_parameter_list(0, 7)
    if inline_bytes:
        raise invalid_field_in_parameter_list(12, 7)  # MAXIMUM INLINE DATA LENGTH is 0
    if cscd_bytes + segment_bytes > MAX_DESCRIPTOR_LIST:
        raise parameter_list_length_error()
    if _HEADER + cscd_bytes + segment_bytes > min(length, len(params)):
        raise parameter_list_length_error()
    cscds = _cscds(params, cscd_bytes)
    start = _HEADER + cscd_bytes
    segments = _segments(params, start, start + segment_bytes, cscds, peers)
    return CopyPlan(None if usage is ListIdUsage.NONE else list_id,
                    usage is ListIdUsage.HOLD, segments)


def _cscds(params: bytes | memoryview, nbytes: int) -> list[int]:
    """Offsets of the CSCD descriptors; each is resolved only if a segment uses it."""
    if nbytes % _CSCD_LENGTH:
        raise invalid_field_in_parameter_list(2, 7)
    offsets = list(range(_HEADER, _HEADER + nbytes, _CSCD_LENGTH))
    if len(offsets) > MAX_CSCD_DESCRIPTORS:
        raise _copy_error(0x06, 2)  # TOO MANY TARGET DESCRIPTORS
    for pos in offsets:
        if params[pos] != IDENTIFICATION_CSCD:
            raise _copy_error(0x07, pos)  # UNSUPPORTED TARGET DESCRIPTOR TYPE CODE
    return offsets


def _segments(params: bytes | memoryview, pos: int, end: int, cscds: list[int],
              peers: Mapping[int, Disk]) -> tuple[CopySegment, ...]:
    out: list[CopySegment] = []
    while pos < end:
        if len(out) == MAX_SEGMENT_DESCRIPTORS:
            raise _copy_error(0x08, 8)  # TOO MANY SEGMENT DESCRIPTORS
        kind = params[pos]
        if kind != BLOCK_TO_BLOCK:
            raise _copy_error(0x09, pos)  # UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE
        if pos + _B2B_LENGTH > end:
            raise parameter_list_length_error()
        _, flags, declared, src, dst, _, nblocks, src_lba, dst_lba = _B2B.unpack_from(params, pos)
        if declared != _B2B_LENGTH - 4:
            raise invalid_field_in_parameter_list(pos + 2, 7)
        src_lun, src_disk = _resolve(params, cscds, src, peers)
        dst_lun, dst_disk = _resolve(params, cscds, dst, peers)
        # DC=1: the NUMBER OF BLOCKS counts destination blocks, else source blocks.
        nbytes = nblocks * (dst_disk.block_size if flags & 0x02 else src_disk.block_size)
        if nbytes % src_disk.block_size or nbytes % dst_disk.block_size:
            raise invalid_field_in_parameter_list(pos + 10, 7)
        # A range past the end is what the copy's READ or WRITE would have failed on;
        # that command is never issued, so there is no sense of it to pass on
        # (SPC-4 6.4.5): COPY ABORTED with no additional sense, as libiscsi expects.
        if src_lba * src_disk.block_size + nbytes > src_disk.num_blocks * src_disk.block_size:
            raise copy_aborted(0x00, 0x00)
        if dst_lba * dst_disk.block_size + nbytes > dst_disk.num_blocks * dst_disk.block_size:
            raise copy_aborted(0x00, 0x00)
        if dst_disk.read_only:
            raise copy_aborted(0x27, 0x00)  # WRITE PROTECTED
        if nbytes:
            out.append(CopySegment(src_lun, src_lba, dst_lun, dst_lba, nbytes))
        pos += _B2B_LENGTH
    return tuple(out)


def _resolve(params: bytes | memoryview, cscds: list[int], index: int,
             peers: Mapping[int, Disk]) -> tuple[int, Disk]:
    """The LUN a CSCD descriptor names: its designator must be one that unit reports
    in VPD page 83h, and its device type and block length must be that unit's."""
    if index >= len(cscds):
        raise _unreachable()
    pos = cscds[index]
    if params[pos + 1] & 0x1F:
        raise _wrong_device()  # only direct-access block devices (type 0)
    head = params[pos + 4 : pos + 8]
    designator = bytes(params[pos + 4 : pos + 8 + min(head[3], 16)])
    for lun, disk in sorted(peers.items()):
        if any(_same(designator, d) for d in lu_designators(disk)):
            if int.from_bytes(params[pos + 29 : pos + 32], "big") != disk.block_size:
                raise _wrong_device()
            return lun, disk
    raise _unreachable()


def _same(given: bytes, ours: bytes) -> bool:
    """Code set, association, designator type, length and value; PIV and protocol
    identifier do not name the unit, so they are not compared."""
    return (len(given) == len(ours) and given[0] & 0x0F == ours[0] & 0x0F
            and given[1] & 0x3F == ours[1] & 0x3F and given[3:] == ours[3:])


@dataclass(slots=True)
class CopyStatus:
    """What COPY STATUS reports for one list identifier."""

    running: bool = True
    failed: bool = False
    segments: int = 0
    nbytes: int = 0


class CopyManager:
    """Per logical unit: the copies its EXTENDED COPY commands started, by I_T nexus and
    LIST IDENTIFIER (SPC-4 6.4.3.2 scopes list identifiers to the nexus). Kept until
    a new copy reuses the identifier or the nexus is lost, so each nexus holds at most
    256 small records."""

    __slots__ = ("_lists",)

    def __init__(self) -> None:
        self._lists: dict[tuple[Nexus, int], CopyStatus] = {}

    def begin(self, nexus: Nexus, plan: CopyPlan) -> None:
        """A copy starts; refused while another with the same list identifier runs."""
        if plan.list_id is None:
            return
        key = (nexus, plan.list_id)
        held = self._lists.get(key)
        if held is not None and held.running:
            raise ScsiError(SenseKey.ILLEGAL_REQUEST, 0x00, 0x16)  # OPERATION IN PROGRESS
        self._lists[key] = CopyStatus()

    def finish(self, nexus: Nexus, plan: CopyPlan, ok: bool) -> None:
        """The copy ended; its status is kept for RECEIVE COPY RESULTS only with HOLD."""
        if plan.list_id is None:
            return
        key = (nexus, plan.list_id)
        if not plan.hold:
            self._lists.pop(key, None)
            return
        status = self._lists.get(key)
        if status is not None:
            status.running, status.failed = False, not ok
            if ok:
                status.segments = len(plan.segments)
                status.nbytes = sum(s.nbytes for s in plan.segments)

    def nexus_lost(self, nexus: Nexus) -> None:
        for key in [k for k in self._lists if k[0] == nexus]:
            del self._lists[key]

    def results(self, cdb: bytes, nexus: Nexus, disk: Disk) -> bytes:
        """RECEIVE COPY RESULTS data (before the allocation length cuts it)."""
        sa = cdb[1] & 0x1F
        if sa == CopySa.OPERATING_PARAMETERS:
            return operating_parameters(disk)
        status = self._lists.get((nexus, cdb[2]))
        if status is None:
            raise invalid_field_in_cdb(2, 7)  # no copy with this LIST IDENTIFIER
        return _copy_status(status)


def _copy_status(status: CopyStatus) -> bytes:
    """COPY STATUS (SPC-4 6.18.3): the transfer count in the smallest unit it fits."""
    state = 0x10 if status.running else 0x01 if status.failed else 0x00
    units, count = 0, status.nbytes
    while count > 0xFFFFFFFF:
        units, count = units + 1, count >> 10
    return struct.pack(">IBHBI", 8, state, min(status.segments, 0xFFFF), units, count)


def operating_parameters(disk: Disk) -> bytes:
    """OPERATING PARAMETERS (SPC-4 6.18.4): the limits `parse` enforces."""
    granularity = disk.block_size.bit_length() - 1
    body = struct.pack(
        ">BBBBHHIIIIIHHBBBBBBBB",
        0x01, 0, 0, 0,  # SNLID: LIST ID USAGE 11b (no list identifier) is supported
        MAX_CSCD_DESCRIPTORS, MAX_SEGMENT_DESCRIPTORS, MAX_DESCRIPTOR_LIST,
        0xFFFF * disk.block_size,  # MAXIMUM SEGMENT LENGTH: NUMBER OF BLOCKS is 16 bits
        0,  # MAXIMUM INLINE DATA LENGTH: no inline or embedded data
        0,  # HELD DATA LIMIT: no segment holds data
        0,  # MAXIMUM STREAM DEVICE TRANSFER SIZE: no stream devices
        0, _MAX_CONCURRENT, _MAX_CONCURRENT,
        granularity, granularity, granularity, 0, 0, 0, len(_IMPLEMENTED),
    )
    payload = body + _IMPLEMENTED
    return _U32.pack(len(payload)) + payload
