"""iSCSI PDUs as slotted dataclasses, and their 48-byte BHS + AHS codec.

One precompiled ``struct.Struct`` per PDU type unpacks a whole BHS in one call
and objects are built positionally: per-PDU interpreter overhead is what limits
throughput, not copying. Data segments are carried as given (bytes or
memoryview) and never copied here; padding and digests belong to framing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from .errors import ProtocolError
from .lun_field import decode_lun, encode_lun, lun_from_u64, lun_to_u64
from .opcodes import Opcode, RejectReason

__all__ = [
    "BHS_LENGTH",
    "DATA_IN_BHS",
    "MAX_DATA_SEGMENT_LENGTH",
    "R2T",
    "RESERVED_TAG",
    "SCSI_RESPONSE_BHS",
    "AsyncMessage",
    "DataIn",
    "DataOut",
    "LoginRequest",
    "LoginResponse",
    "LogoutRequest",
    "LogoutResponse",
    "NopIn",
    "NopOut",
    "Pdu",
    "Reject",
    "ScsiCommand",
    "ScsiResponse",
    "SnackRequest",
    "TaskMgmtRequest",
    "TaskMgmtResponse",
    "TextRequest",
    "TextResponse",
    "WireBytes",
    "bhs_lengths",
    "data_in_bhs",
    "decode_lun",
    "decode_pdu",
    "encode_header",
    "encode_lun",
    "parse_sense_segment",
    "scsi_command_bhs",
    "sense_segment",
]

BHS_LENGTH = 48
MAX_DATA_SEGMENT_LENGTH = (1 << 24) - 1
RESERVED_TAG = 0xFFFFFFFF
"""ITT/TTT value meaning "none" (RFC 7143 §11.2.1.8)."""

WireBytes = bytes | memoryview

_F = 0x80
_IMMEDIATE = 0x40
_LENS = struct.Struct(">I")
_AHS_HEAD = struct.Struct(">HB")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")

_AHS_EXTENDED_CDB = 1
_AHS_BIDI_READ_LENGTH = 2

# One layout per PDU type: byte 0, byte 1, bytes 2-3, TotalAHSLength<<24 |
# DataSegmentLength, then the opcode-specific words of RFC 7143 §11.
_NOP_OUT = struct.Struct(">BBHIQIIII16x")
_SCSI_COMMAND = struct.Struct(">BBHIQIIII16s")
_TMF_REQUEST = struct.Struct(">BBHIQIIIIII8x")
_LOGIN_REQUEST = struct.Struct(">BBBBIHIHIH2xII16x")
_TEXT_REQUEST = _NOP_OUT
_DATA_OUT = struct.Struct(">BBHIQII4xI4xII4x")
_LOGOUT_REQUEST = struct.Struct(">BBHI8xIH2xII16x")
_SNACK = struct.Struct(">BBHIQII4xI8xII")
_NOP_IN = struct.Struct(">BBHIQIIIII12x")
_SCSI_RESPONSE = struct.Struct(">BBBBI8xIIIIIIII")
_TMF_RESPONSE = struct.Struct(">BBBxI8xI4xIII12x")
_LOGIN_RESPONSE = struct.Struct(">BBBBIHIHI4xIIIBB10x")
_TEXT_RESPONSE = _NOP_IN
_DATA_IN = struct.Struct(">BBxBIQIIIIIIII")
_LOGOUT_RESPONSE = struct.Struct(">BBBxI8xI4xIII4xHH4x")
_R2T = struct.Struct(">BBHIQIIIIIIII")
_ASYNC = struct.Struct(">BBHIQI4xIIIBBHHH4x")
_REJECT = struct.Struct(">BBBxI8xI4xIIII8x")


def _lens(ahs_length: int, data: WireBytes) -> int:
    n = len(data)
    if n > MAX_DATA_SEGMENT_LENGTH:
        raise ValueError(f"data segment of {n} bytes exceeds the 24-bit DataSegmentLength")
    return (ahs_length >> 2) << 24 | n


def _b0(opcode: int, immediate: bool) -> int:
    return opcode | _IMMEDIATE if immediate else opcode


# ---------------------------------------------------------------- initiator


@dataclass(slots=True)
class NopOut:
    OPCODE: ClassVar[Opcode] = Opcode.NOP_OUT
    itt: int = RESERVED_TAG
    ttt: int = RESERVED_TAG
    cmd_sn: int = 0
    exp_stat_sn: int = 0
    lun: int = 0
    immediate: bool = False
    data: WireBytes = b""

    def _header(self) -> bytes:
        return _NOP_OUT.pack(
            _b0(0x00, self.immediate), _F, 0, _lens(0, self.data), lun_to_u64(self.lun),
            self.itt, self.ttt, self.cmd_sn, self.exp_stat_sn,
        )


@dataclass(slots=True)
class ScsiCommand:
    """``cdb`` is the whole CDB; bytes beyond 16 travel in an Extended CDB AHS."""

    OPCODE: ClassVar[Opcode] = Opcode.SCSI_COMMAND
    itt: int = 0
    cdb: bytes = bytes(16)
    expected_data_transfer_length: int = 0
    cmd_sn: int = 0
    exp_stat_sn: int = 0
    lun: int = 0
    final: bool = True
    read: bool = False
    write: bool = False
    attr: int = 1
    bidi_read_length: int | None = None
    immediate: bool = False
    data: WireBytes = b""

    def _header(self) -> bytes:
        flags = (
            (_F if self.final else 0) | (0x40 if self.read else 0)
            | (0x20 if self.write else 0) | (self.attr & 0x07)
        )
        cdb = self.cdb
        ahs = b""
        if len(cdb) > 16:
            extra = cdb[16:]
            ahs = _AHS_HEAD.pack(len(extra) + 1, _AHS_EXTENDED_CDB) + b"\0" + extra
            ahs += bytes(-len(ahs) & 3)
        if self.bidi_read_length is not None:
            ahs += _AHS_HEAD.pack(5, _AHS_BIDI_READ_LENGTH) + b"\0" + _U32.pack(
                self.bidi_read_length
            )
        bhs = scsi_command_bhs(
            _b0(0x01, self.immediate), flags, _lens(len(ahs), self.data), self.lun, self.itt,
            self.expected_data_transfer_length, self.cmd_sn, self.exp_stat_sn, cdb[:16],
        )
        return bhs + ahs if ahs else bhs


def scsi_command_bhs(
    b0: int, flags: int, lens: int, lun: int, itt: int, length: int, cmd_sn: int,
    exp_stat_sn: int, cdb16: bytes,
) -> bytes:
    """The BHS of a SCSI Command, field by field (``lens``: TotalAHSLength << 24 |
    DataSegmentLength; ``flags``: F, R, W, ATTR). :class:`ScsiCommand` packs through
    here, and so does the initiator's per-command path, which has the fields at hand
    and would spend more building the object than packing it."""
    return _SCSI_COMMAND.pack(b0, flags, 0, lens, lun_to_u64(lun), itt, length, cmd_sn,
                              exp_stat_sn, cdb16)


@dataclass(slots=True)
class TaskMgmtRequest:
    OPCODE: ClassVar[Opcode] = Opcode.TASK_MGMT_REQUEST
    function: int = 0
    itt: int = 0
    referenced_task_tag: int = RESERVED_TAG
    cmd_sn: int = 0
    exp_stat_sn: int = 0
    ref_cmd_sn: int = 0
    exp_data_sn: int = 0
    lun: int = 0
    immediate: bool = True

    def _header(self) -> bytes:
        return _TMF_REQUEST.pack(
            _b0(0x02, self.immediate), _F | (self.function & 0x7F), 0, 0,
            lun_to_u64(self.lun), self.itt, self.referenced_task_tag, self.cmd_sn,
            self.exp_stat_sn, self.ref_cmd_sn, self.exp_data_sn,
        )


@dataclass(slots=True)
class LoginRequest:
    OPCODE: ClassVar[Opcode] = Opcode.LOGIN_REQUEST
    isid: int = 0
    tsih: int = 0
    itt: int = 0
    cid: int = 0
    cmd_sn: int = 0
    exp_stat_sn: int = 0
    transit: bool = False
    continue_: bool = False
    csg: int = 0
    nsg: int = 0
    version_max: int = 0
    version_min: int = 0
    immediate: bool = True
    data: WireBytes = b""

    def _header(self) -> bytes:
        flags = (
            (_F if self.transit else 0) | (0x40 if self.continue_ else 0)
            | (self.csg & 3) << 2 | (self.nsg & 3)
        )
        return _LOGIN_REQUEST.pack(
            _b0(0x03, self.immediate), flags, self.version_max, self.version_min,
            _lens(0, self.data), self.isid >> 32, self.isid & 0xFFFFFFFF, self.tsih,
            self.itt, self.cid, self.cmd_sn, self.exp_stat_sn,
        )


@dataclass(slots=True)
class TextRequest:
    OPCODE: ClassVar[Opcode] = Opcode.TEXT_REQUEST
    itt: int = 0
    ttt: int = RESERVED_TAG
    cmd_sn: int = 0
    exp_stat_sn: int = 0
    final: bool = True
    continue_: bool = False
    lun: int = 0
    immediate: bool = False
    data: WireBytes = b""

    def _header(self) -> bytes:
        flags = (_F if self.final else 0) | (0x40 if self.continue_ else 0)
        return _TEXT_REQUEST.pack(
            _b0(0x04, self.immediate), flags, 0, _lens(0, self.data), lun_to_u64(self.lun),
            self.itt, self.ttt, self.cmd_sn, self.exp_stat_sn,
        )


@dataclass(slots=True)
class DataOut:
    OPCODE: ClassVar[Opcode] = Opcode.DATA_OUT
    itt: int = 0
    ttt: int = RESERVED_TAG
    exp_stat_sn: int = 0
    data_sn: int = 0
    buffer_offset: int = 0
    final: bool = False
    lun: int = 0
    data: WireBytes = b""

    def _header(self) -> bytes:
        return _DATA_OUT.pack(
            0x05, _F if self.final else 0, 0, _lens(0, self.data), lun_to_u64(self.lun),
            self.itt, self.ttt, self.exp_stat_sn, self.data_sn, self.buffer_offset,
        )


@dataclass(slots=True)
class LogoutRequest:
    OPCODE: ClassVar[Opcode] = Opcode.LOGOUT_REQUEST
    reason: int = 0
    itt: int = 0
    cid: int = 0
    cmd_sn: int = 0
    exp_stat_sn: int = 0
    immediate: bool = False

    def _header(self) -> bytes:
        return _LOGOUT_REQUEST.pack(
            _b0(0x06, self.immediate), _F | (self.reason & 0x7F), 0, 0,
            self.itt, self.cid, self.cmd_sn, self.exp_stat_sn,
        )


@dataclass(slots=True)
class SnackRequest:
    OPCODE: ClassVar[Opcode] = Opcode.SNACK_REQUEST
    type: int = 0
    itt: int = RESERVED_TAG
    ttt: int = RESERVED_TAG
    exp_stat_sn: int = 0
    beg_run: int = 0
    run_length: int = 0
    lun: int = 0

    def _header(self) -> bytes:
        return _SNACK.pack(
            0x10, _F | (self.type & 0x0F), 0, 0, lun_to_u64(self.lun), self.itt,
            self.ttt, self.exp_stat_sn, self.beg_run, self.run_length,
        )


# ------------------------------------------------------------------- target


@dataclass(slots=True)
class NopIn:
    OPCODE: ClassVar[Opcode] = Opcode.NOP_IN
    itt: int = RESERVED_TAG
    ttt: int = RESERVED_TAG
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    lun: int = 0
    data: WireBytes = b""

    def _header(self) -> bytes:
        return _NOP_IN.pack(
            0x20, _F, 0, _lens(0, self.data), lun_to_u64(self.lun), self.itt, self.ttt,
            self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn,
        )


@dataclass(slots=True)
class ScsiResponse:
    """``data`` is SenseLength + sense data (see :func:`sense_segment`), or empty."""

    OPCODE: ClassVar[Opcode] = Opcode.SCSI_RESPONSE
    itt: int = 0
    status: int = 0
    response: int = 0
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    exp_data_sn: int = 0
    residual_count: int = 0
    bidi_read_residual_count: int = 0
    snack_tag: int = 0
    residual_overflow: bool = False
    residual_underflow: bool = False
    bidi_read_residual_overflow: bool = False
    bidi_read_residual_underflow: bool = False
    data: WireBytes = b""

    def _header(self) -> bytes:
        flags = (
            _F | (0x10 if self.bidi_read_residual_overflow else 0)
            | (0x08 if self.bidi_read_residual_underflow else 0)
            | (0x04 if self.residual_overflow else 0)
            | (0x02 if self.residual_underflow else 0)
        )
        return scsi_response_bhs(
            flags, self.response, self.status, _lens(0, self.data), self.itt, self.snack_tag,
            self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn, self.exp_data_sn,
            self.bidi_read_residual_count, self.residual_count,
        )


def scsi_response_bhs(
    flags: int, response: int, status: int, lens: int, itt: int, snack_tag: int,
    stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int, exp_data_sn: int,
    bidi_residual: int, residual: int,
) -> bytes:
    """The BHS of a SCSI Response, field by field (``flags``: F, o, u, O, U; ``lens``:
    DataSegmentLength). :class:`ScsiResponse` packs through here, and so does the
    target's GOOD status without sense, sent once per write, as `data_in_bhs` is once
    per read."""
    return _SCSI_RESPONSE.pack(0x21, flags, response, status, lens, itt, snack_tag, stat_sn,
                               exp_cmd_sn, max_cmd_sn, exp_data_sn, bidi_residual, residual)


@dataclass(slots=True)
class TaskMgmtResponse:
    OPCODE: ClassVar[Opcode] = Opcode.TASK_MGMT_RESPONSE
    response: int = 0
    itt: int = 0
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0

    def _header(self) -> bytes:
        return _TMF_RESPONSE.pack(
            0x22, _F, self.response, 0, self.itt, self.stat_sn, self.exp_cmd_sn,
            self.max_cmd_sn,
        )


@dataclass(slots=True)
class LoginResponse:
    OPCODE: ClassVar[Opcode] = Opcode.LOGIN_RESPONSE
    isid: int = 0
    tsih: int = 0
    itt: int = 0
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    status_class: int = 0
    status_detail: int = 0
    transit: bool = False
    continue_: bool = False
    csg: int = 0
    nsg: int = 0
    version_max: int = 0
    version_active: int = 0
    data: WireBytes = b""

    def _header(self) -> bytes:
        flags = (
            (_F if self.transit else 0) | (0x40 if self.continue_ else 0)
            | (self.csg & 3) << 2 | (self.nsg & 3)
        )
        return _LOGIN_RESPONSE.pack(
            0x23, flags, self.version_max, self.version_active, _lens(0, self.data),
            self.isid >> 32, self.isid & 0xFFFFFFFF, self.tsih, self.itt, self.stat_sn,
            self.exp_cmd_sn, self.max_cmd_sn, self.status_class, self.status_detail,
        )


@dataclass(slots=True)
class TextResponse:
    OPCODE: ClassVar[Opcode] = Opcode.TEXT_RESPONSE
    itt: int = 0
    ttt: int = RESERVED_TAG
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    final: bool = True
    continue_: bool = False
    lun: int = 0
    data: WireBytes = b""

    def _header(self) -> bytes:
        flags = (_F if self.final else 0) | (0x40 if self.continue_ else 0)
        return _TEXT_RESPONSE.pack(
            0x24, flags, 0, _lens(0, self.data), lun_to_u64(self.lun), self.itt, self.ttt,
            self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn,
        )


@dataclass(slots=True)
class DataIn:
    """``status`` and ``stat_sn`` mean something only when ``status_present`` (S bit)."""

    OPCODE: ClassVar[Opcode] = Opcode.DATA_IN
    itt: int = 0
    ttt: int = RESERVED_TAG
    data_sn: int = 0
    buffer_offset: int = 0
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    residual_count: int = 0
    status: int = 0
    final: bool = False
    acknowledge: bool = False
    residual_overflow: bool = False
    residual_underflow: bool = False
    status_present: bool = False
    lun: int = 0
    data: WireBytes = b""

    def _header(self) -> bytes:
        flags = (
            (_F if self.final else 0) | (0x40 if self.acknowledge else 0)
            | (0x04 if self.residual_overflow else 0)
            | (0x02 if self.residual_underflow else 0)
            | (0x01 if self.status_present else 0)
        )
        return data_in_bhs(
            flags, self.status, _lens(0, self.data), self.lun, self.itt, self.ttt, self.stat_sn,
            self.exp_cmd_sn, self.max_cmd_sn, self.data_sn, self.buffer_offset,
            self.residual_count,
        )


def data_in_bhs(
    flags: int, status: int, lens: int, lun: int, itt: int, ttt: int, stat_sn: int,
    exp_cmd_sn: int, max_cmd_sn: int, data_sn: int, buffer_offset: int, residual: int,
) -> bytes:
    """The BHS of a Data-In, field by field (``flags``: F, A, O, U, S; ``lens``:
    DataSegmentLength). :class:`DataIn` packs through here, and so does the target's
    final Data-In with status, sent once per read: building the object to pack it
    would cost more than the packing."""
    return _DATA_IN.pack(0x25, flags, status, lens, lun_to_u64(lun), itt, ttt, stat_sn,
                         exp_cmd_sn, max_cmd_sn, data_sn, buffer_offset, residual)


DATA_IN_BHS = _DATA_IN
"""The Data-In BHS, field by field as :func:`data_in_bhs` packs it (opcode, flags,
status, lens, LUN, ITT, TTT, StatSN, ExpCmdSN, MaxCmdSN, DataSN, BufferOffset,
ResidualCount). The initiator unpacks the answer to every read straight from its
receive buffer with this, because building a :class:`DataIn` costs more than the
rest of receiving it."""


SCSI_RESPONSE_BHS = _SCSI_RESPONSE
"""The SCSI Response BHS, field by field as :func:`scsi_response_bhs` packs it (opcode,
flags, response, status, lens, ITT, SNACK tag, StatSN, ExpCmdSN, MaxCmdSN, ExpDataSN,
bidirectional read residual, residual). The initiator unpacks the answer to every write
straight from its receive buffer with this, as it does Data-In with DATA_IN_BHS."""


@dataclass(slots=True)
class LogoutResponse:
    OPCODE: ClassVar[Opcode] = Opcode.LOGOUT_RESPONSE
    response: int = 0
    itt: int = 0
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    time2wait: int = 0
    time2retain: int = 0

    def _header(self) -> bytes:
        return _LOGOUT_RESPONSE.pack(
            0x26, _F, self.response, 0, self.itt, self.stat_sn, self.exp_cmd_sn,
            self.max_cmd_sn, self.time2wait, self.time2retain,
        )


@dataclass(slots=True)
class R2T:
    OPCODE: ClassVar[Opcode] = Opcode.R2T
    itt: int = 0
    ttt: int = 0
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    r2t_sn: int = 0
    buffer_offset: int = 0
    desired_data_transfer_length: int = 0
    lun: int = 0

    def _header(self) -> bytes:
        return _R2T.pack(
            0x31, _F, 0, 0, lun_to_u64(self.lun), self.itt, self.ttt, self.stat_sn,
            self.exp_cmd_sn, self.max_cmd_sn, self.r2t_sn, self.buffer_offset,
            self.desired_data_transfer_length,
        )


@dataclass(slots=True)
class AsyncMessage:
    OPCODE: ClassVar[Opcode] = Opcode.ASYNC_MESSAGE
    async_event: int = 0
    async_vcode: int = 0
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    parameter1: int = 0
    parameter2: int = 0
    parameter3: int = 0
    lun: int = 0
    data: WireBytes = b""

    def _header(self) -> bytes:
        return _ASYNC.pack(
            0x32, _F, 0, _lens(0, self.data), lun_to_u64(self.lun), RESERVED_TAG,
            self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn, self.async_event,
            self.async_vcode, self.parameter1, self.parameter2, self.parameter3,
        )


@dataclass(slots=True)
class Reject:
    """``data`` is the complete header of the rejected PDU."""

    OPCODE: ClassVar[Opcode] = Opcode.REJECT
    reason: int = 0
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    data_sn: int = 0
    data: WireBytes = b""

    def _header(self) -> bytes:
        return _REJECT.pack(
            0x3F, _F, self.reason, _lens(0, self.data), RESERVED_TAG, self.stat_sn,
            self.exp_cmd_sn, self.max_cmd_sn, self.data_sn,
        )


Pdu = (
    NopOut | ScsiCommand | TaskMgmtRequest | LoginRequest | TextRequest | DataOut
    | LogoutRequest | SnackRequest | NopIn | ScsiResponse | TaskMgmtResponse
    | LoginResponse | TextResponse | DataIn | LogoutResponse | R2T | AsyncMessage | Reject
)


def encode_header(pdu: Pdu) -> bytes:
    """BHS + AHS with TotalAHSLength and DataSegmentLength taken from ``pdu``."""
    return pdu._header()


def bhs_lengths(bhs: WireBytes) -> tuple[int, int]:
    """(AHS bytes, DataSegmentLength) announced by a BHS, before reading the rest.

    Lets a runtime read exactly the AHS and the data segment into buffers it
    reserved, instead of over-reading into a shared one.
    """
    if len(bhs) < BHS_LENGTH:
        raise ProtocolError(f"BHS is {len(bhs)} bytes, expected {BHS_LENGTH}")
    lens: int = _LENS.unpack_from(bhs, 4)[0]
    return (lens >> 24) << 2, lens & 0xFFFFFF


# ------------------------------------------------------------------ decoding

_Decoder = Callable[[int, WireBytes, WireBytes, WireBytes], Pdu]


def _nop_out(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    _, _, _, _, lun, itt, ttt, cmd_sn, exp_stat_sn = _NOP_OUT.unpack(bhs)
    return NopOut(itt, ttt, cmd_sn, exp_stat_sn, lun_from_u64(lun), bool(b0 & _IMMEDIATE), data)


def _scsi_command(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    _, flags, _, _, lun, itt, edtl, cmd_sn, exp_stat_sn, cdb = _SCSI_COMMAND.unpack(bhs)
    bidi: int | None = None
    if ahs:
        cdb, bidi = _parse_command_ahs(cdb, ahs)
    return ScsiCommand(
        itt, cdb, edtl, cmd_sn, exp_stat_sn, lun_from_u64(lun), bool(flags & _F),
        bool(flags & 0x40), bool(flags & 0x20), flags & 0x07, bidi, bool(b0 & _IMMEDIATE), data,
    )


def _parse_command_ahs(cdb: bytes, ahs: WireBytes) -> tuple[bytes, int | None]:
    ext: bytes | None = None
    bidi: int | None = None
    pos = 0
    end = len(ahs)
    while pos < end:
        if end - pos < 4:
            raise ProtocolError(f"AHS truncated: {end - pos} bytes left at offset {pos}")
        length, ahs_type = _AHS_HEAD.unpack_from(ahs, pos)
        size = (3 + length + 3) & ~3
        if pos + size > end:
            raise ProtocolError(
                f"AHS of type {ahs_type} at offset {pos} with AHSLength {length} "
                f"overruns TotalAHSLength ({end} bytes)"
            )
        if ahs_type == _AHS_EXTENDED_CDB:
            if ext is not None:
                raise ProtocolError("more than one Extended CDB AHS")
            if length < 2:
                raise ProtocolError(
                    f"Extended CDB AHS with AHSLength {length} carries no CDB bytes"
                )
            ext = bytes(ahs[pos + 4 : pos + 3 + length])
        elif ahs_type == _AHS_BIDI_READ_LENGTH:
            if bidi is not None:
                raise ProtocolError("more than one Bidirectional Read Expected Data Length AHS")
            if length != 5:
                raise ProtocolError(
                    f"Bidirectional Read Expected Data Length AHS has AHSLength {length}, "
                    "expected 5"
                )
            bidi = _U32.unpack_from(ahs, pos + 4)[0]
        else:
            raise ProtocolError(f"unknown AHSType {ahs_type} in SCSI Command")
        pos += size
    return (cdb + ext if ext is not None else cdb), bidi


def _tmf_request(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    _, b1, _, _, lun, itt, rtt, cmd_sn, exp_stat_sn, ref_cmd_sn, exp_data_sn = (
        _TMF_REQUEST.unpack(bhs)
    )
    return TaskMgmtRequest(
        b1 & 0x7F, itt, rtt, cmd_sn, exp_stat_sn, ref_cmd_sn, exp_data_sn,
        lun_from_u64(lun), bool(b0 & _IMMEDIATE),
    )


def _login_request(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    _, f, vmax, vmin, _, hi, lo, tsih, itt, cid, cmd_sn, exp_stat_sn = _LOGIN_REQUEST.unpack(bhs)
    return LoginRequest(
        hi << 32 | lo, tsih, itt, cid, cmd_sn, exp_stat_sn, bool(f & _F), bool(f & 0x40),
        (f >> 2) & 3, f & 3, vmax, vmin, bool(b0 & _IMMEDIATE), data,
    )


def _text_request(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    _, f, _, _, lun, itt, ttt, cmd_sn, exp_stat_sn = _TEXT_REQUEST.unpack(bhs)
    return TextRequest(
        itt, ttt, cmd_sn, exp_stat_sn, bool(f & _F), bool(f & 0x40), lun_from_u64(lun),
        bool(b0 & _IMMEDIATE), data,
    )


def _data_out(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    _, f, _, _, lun, itt, ttt, exp_stat_sn, data_sn, offset = _DATA_OUT.unpack(bhs)
    return DataOut(itt, ttt, exp_stat_sn, data_sn, offset, bool(f & _F), lun_from_u64(lun), data)


def _logout_request(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    _, b1, _, _, itt, cid, cmd_sn, exp_stat_sn = _LOGOUT_REQUEST.unpack(bhs)
    return LogoutRequest(b1 & 0x7F, itt, cid, cmd_sn, exp_stat_sn, bool(b0 & _IMMEDIATE))


def _snack(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    _, b1, _, _, lun, itt, ttt, exp_stat_sn, beg_run, run_length = _SNACK.unpack(bhs)
    return SnackRequest(b1 & 0x0F, itt, ttt, exp_stat_sn, beg_run, run_length, lun_from_u64(lun))


def _nop_in(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    _, _, _, _, lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn = _NOP_IN.unpack(bhs)
    return NopIn(itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn, lun_from_u64(lun), data)


def _scsi_response(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    (_, f, response, status, _, itt, snack_tag, stat_sn, exp_cmd_sn, max_cmd_sn,
     exp_data_sn, bidi_residual, residual) = _SCSI_RESPONSE.unpack(bhs)
    return ScsiResponse(
        itt, status, response, stat_sn, exp_cmd_sn, max_cmd_sn, exp_data_sn, residual,
        bidi_residual, snack_tag, bool(f & 0x04), bool(f & 0x02), bool(f & 0x10),
        bool(f & 0x08), data,
    )


def _tmf_response(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    _, _, response, _, itt, stat_sn, exp_cmd_sn, max_cmd_sn = _TMF_RESPONSE.unpack(bhs)
    return TaskMgmtResponse(response, itt, stat_sn, exp_cmd_sn, max_cmd_sn)


def _login_response(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    (_, f, vmax, vact, _, hi, lo, tsih, itt, stat_sn, exp_cmd_sn, max_cmd_sn, sclass,
     sdetail) = _LOGIN_RESPONSE.unpack(bhs)
    return LoginResponse(
        hi << 32 | lo, tsih, itt, stat_sn, exp_cmd_sn, max_cmd_sn, sclass, sdetail,
        bool(f & _F), bool(f & 0x40), (f >> 2) & 3, f & 3, vmax, vact, data,
    )


def _text_response(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    _, f, _, _, lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn = _TEXT_RESPONSE.unpack(bhs)
    return TextResponse(
        itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn, bool(f & _F), bool(f & 0x40),
        lun_from_u64(lun), data,
    )


def _data_in(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    (_, f, status, _, lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn, offset,
     residual) = _DATA_IN.unpack(bhs)
    return DataIn(
        itt, ttt, data_sn, offset, stat_sn, exp_cmd_sn, max_cmd_sn, residual, status,
        bool(f & _F), bool(f & 0x40), bool(f & 0x04), bool(f & 0x02), bool(f & 0x01),
        lun_from_u64(lun), data,
    )


def _logout_response(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    _, _, response, _, itt, stat_sn, exp_cmd_sn, max_cmd_sn, t2w, t2r = (
        _LOGOUT_RESPONSE.unpack(bhs)
    )
    return LogoutResponse(response, itt, stat_sn, exp_cmd_sn, max_cmd_sn, t2w, t2r)


def _r2t(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    (_, _, _, _, lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn, r2t_sn, offset,
     desired) = _R2T.unpack(bhs)
    return R2T(
        itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn, r2t_sn, offset, desired, lun_from_u64(lun)
    )


def _async(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    (_, _, _, _, lun, _, stat_sn, exp_cmd_sn, max_cmd_sn, event, vcode, p1, p2,
     p3) = _ASYNC.unpack(bhs)
    return AsyncMessage(
        event, vcode, stat_sn, exp_cmd_sn, max_cmd_sn, p1, p2, p3, lun_from_u64(lun), data
    )


def _reject(b0: int, bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    _, _, reason, _, _, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn = _REJECT.unpack(bhs)
    return Reject(reason, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn, data)


_DECODERS: dict[int, _Decoder] = {
    Opcode.NOP_OUT: _nop_out,
    Opcode.SCSI_COMMAND: _scsi_command,
    Opcode.TASK_MGMT_REQUEST: _tmf_request,
    Opcode.LOGIN_REQUEST: _login_request,
    Opcode.TEXT_REQUEST: _text_request,
    Opcode.DATA_OUT: _data_out,
    Opcode.LOGOUT_REQUEST: _logout_request,
    Opcode.SNACK_REQUEST: _snack,
    Opcode.NOP_IN: _nop_in,
    Opcode.SCSI_RESPONSE: _scsi_response,
    Opcode.TASK_MGMT_RESPONSE: _tmf_response,
    Opcode.LOGIN_RESPONSE: _login_response,
    Opcode.TEXT_RESPONSE: _text_response,
    Opcode.DATA_IN: _data_in,
    Opcode.LOGOUT_RESPONSE: _logout_response,
    Opcode.R2T: _r2t,
    Opcode.ASYNC_MESSAGE: _async,
    Opcode.REJECT: _reject,
}


_NO_DATA = frozenset({
    Opcode.TASK_MGMT_REQUEST, Opcode.LOGOUT_REQUEST, Opcode.SNACK_REQUEST,
    Opcode.TASK_MGMT_RESPONSE, Opcode.LOGOUT_RESPONSE, Opcode.R2T,
})


def decode_pdu(bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    """Build a PDU from its BHS, AHS and (unpadded) data segment.

    ``data`` is kept by reference, so a runtime that read it into a reserved
    buffer hands that buffer up without a copy.
    """
    if len(bhs) != BHS_LENGTH:
        raise ProtocolError(f"BHS is {len(bhs)} bytes, expected {BHS_LENGTH}")
    lens: int = _LENS.unpack_from(bhs, 4)[0]
    ahs_length = (lens >> 24) << 2
    if ahs_length != len(ahs):
        raise ProtocolError(
            f"TotalAHSLength announces {ahs_length} bytes of AHS, got {len(ahs)}"
        )
    if lens & 0xFFFFFF != len(data):
        raise ProtocolError(
            f"DataSegmentLength announces {lens & 0xFFFFFF} bytes, got {len(data)}"
        )
    return decode_framed(bhs, ahs, data)


def decode_framed(bhs: WireBytes, ahs: WireBytes, data: WireBytes) -> Pdu:
    """`decode_pdu` for the framer, which cuts the AHS and data segment by the BHS's
    own lengths (so they agree with it, and the BHS is whole): only the rules those
    slices cannot break are checked, once a PDU (every command a target takes)."""
    b0 = bhs[0]
    opcode = b0 & 0x3F
    decoder = _DECODERS.get(opcode)
    if decoder is None:
        raise ProtocolError(f"unknown opcode 0x{opcode:02x}",
                            reject=RejectReason.COMMAND_NOT_SUPPORTED)
    if ahs and opcode != Opcode.SCSI_COMMAND:
        raise ProtocolError(f"AHS present on {Opcode(opcode).name}, which defines none")
    if data and opcode in _NO_DATA:
        raise ProtocolError(f"{Opcode(opcode).name} with a {len(data)}-byte data segment")
    return decoder(b0, bhs, ahs, data)


def sense_segment(sense: bytes) -> bytes:
    """SCSI Response data segment carrying ``sense`` (RFC 7143 §11.4.7.2)."""
    return _U16.pack(len(sense)) + sense


def parse_sense_segment(data: WireBytes) -> bytes:
    """Sense data from a SCSI Response data segment; empty if none was sent."""
    if not data:
        return b""
    if len(data) < 2:
        raise ProtocolError(f"SCSI Response data segment of {len(data)} byte has no SenseLength")
    (length,) = _U16.unpack_from(data, 0)
    if length > len(data) - 2:
        raise ProtocolError(
            f"SenseLength {length} exceeds the {len(data) - 2} bytes that follow it"
        )
    return bytes(data[2 : 2 + length])
