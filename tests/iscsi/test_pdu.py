"""PDU codec: byte layout against RFC 7143 §11, round trips, hostile input."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from earmark.iscsi import pdu as P
from earmark.iscsi.errors import ProtocolError
from earmark.iscsi.lun_field import lun_from_u64
from earmark.iscsi.opcodes import Opcode, RejectReason

U32 = st.integers(0, 0xFFFFFFFF)
LUNS = st.one_of(
    st.integers(0, 0x3FFF),
    # Undecodable LUN fields (bus != 0, other address methods) as negatives.
    st.integers(1, (1 << 64) - 1)
    .filter(lambda raw: lun_from_u64(raw) < 0)
    .map(lambda raw: -1 - raw),
)
FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "isid": st.integers(0, (1 << 48) - 1),
    "tsih": st.integers(0, 0xFFFF),
    "cid": st.integers(0, 0xFFFF),
    "csg": st.integers(0, 3),
    "nsg": st.integers(0, 3),
    "version_max": st.integers(0, 255),
    "version_min": st.integers(0, 255),
    "version_active": st.integers(0, 255),
    "function": st.integers(0, 0x7F),
    "reason": st.integers(0, 0x7F),
    "type": st.integers(0, 0x0F),
    "attr": st.integers(0, 7),
    "status": st.integers(0, 255),
    "response": st.integers(0, 255),
    "status_class": st.integers(0, 255),
    "status_detail": st.integers(0, 255),
    "async_event": st.integers(0, 255),
    "async_vcode": st.integers(0, 255),
    "time2wait": st.integers(0, 0xFFFF),
    "time2retain": st.integers(0, 0xFFFF),
    "parameter1": st.integers(0, 0xFFFF),
    "parameter2": st.integers(0, 0xFFFF),
    "parameter3": st.integers(0, 0xFFFF),
    "lun": LUNS,
    "cdb": st.binary(min_size=16, max_size=260),
    "bidi_read_length": st.none() | U32,
    "data": st.binary(max_size=300),
}
PDU_TYPES: list[type[Any]] = [
    P.NopOut, P.ScsiCommand, P.TaskMgmtRequest, P.LoginRequest, P.TextRequest, P.DataOut,
    P.LogoutRequest, P.SnackRequest, P.NopIn, P.ScsiResponse, P.TaskMgmtResponse,
    P.LoginResponse, P.TextResponse, P.DataIn, P.LogoutResponse, P.R2T, P.AsyncMessage,
    P.Reject,
]


def pdu_strategy(cls: type[Any]) -> st.SearchStrategy[Any]:
    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        if f.name in FIELD_STRATEGIES:
            kwargs[f.name] = FIELD_STRATEGIES[f.name]
        elif f.type == "bool":
            kwargs[f.name] = st.booleans()
        else:
            kwargs[f.name] = U32
    return st.builds(cls, **kwargs)


ANY_PDU = st.one_of([pdu_strategy(cls) for cls in PDU_TYPES])


def split(header: bytes) -> tuple[bytes, bytes]:
    return header[:48], header[48:]


@given(ANY_PDU)
def test_round_trip(pdu: Any) -> None:
    header = P.encode_header(pdu)
    assert len(header) % 4 == 0
    ahs_len, dsl = P.bhs_lengths(header)
    assert ahs_len == len(header) - 48
    assert dsl == len(pdu.data if hasattr(pdu, "data") else b"")
    bhs, ahs = split(header)
    decoded = P.decode_pdu(bhs, ahs, getattr(pdu, "data", b""))
    assert decoded == pdu
    assert P.encode_header(decoded) == header


@given(st.binary(min_size=48, max_size=48), st.binary(max_size=64), st.binary(max_size=64))
def test_decoder_raises_only_protocol_error(bhs: bytes, ahs: bytes, data: bytes) -> None:
    # Make the lengths agree half of the time so the per-opcode decoders run.
    if bhs[1] & 1:
        words = len(ahs) // 4
        ahs = ahs[: words * 4]
        bhs = bhs[:4] + struct.pack(">I", words << 24 | len(data)) + bhs[8:]
    try:
        P.decode_pdu(bhs, ahs, data)
    except ProtocolError as exc:
        assert exc.reason


def test_scsi_command_layout() -> None:
    cmd = P.ScsiCommand(
        itt=0x11223344, cdb=bytes(range(1, 11)), expected_data_transfer_length=4096,
        cmd_sn=7, exp_stat_sn=9, lun=3, read=True, attr=1, immediate=True,
    )
    h = P.encode_header(cmd)
    assert len(h) == 48
    assert h[0] == 0x41  # I bit + opcode 0x01
    assert h[1] == 0x80 | 0x40 | 0x01  # F, R, ATTR=simple
    assert h[8:16] == bytes([0, 3, 0, 0, 0, 0, 0, 0])
    assert h[16:20] == bytes.fromhex("11223344")
    assert struct.unpack(">III", h[20:32]) == (4096, 7, 9)
    assert h[32:48] == bytes(range(1, 11)) + bytes(6)


def test_extended_cdb_and_bidi_ahs() -> None:
    cdb = bytes(range(32))
    cmd = P.ScsiCommand(cdb=cdb, bidi_read_length=0x01020304)
    h = P.encode_header(cmd)
    assert h[4] == (len(h) - 48) // 4
    ahs = h[48:]
    # Extended CDB AHS: AHSLength = 16 extra bytes + reserved byte, type 1.
    assert ahs[:4] == b"\x00\x11\x01\x00"
    assert ahs[4:20] == cdb[16:]
    assert ahs[20:28] == b"\x00\x05\x02\x00\x01\x02\x03\x04"
    decoded = P.decode_pdu(h[:48], ahs, b"")
    assert isinstance(decoded, P.ScsiCommand)
    assert decoded.cdb == cdb
    assert decoded.bidi_read_length == 0x01020304


def test_login_response_layout() -> None:
    resp = P.LoginResponse(
        isid=0x80123456789A, tsih=0x0102, itt=5, stat_sn=1, status_class=2,
        status_detail=1, transit=True, csg=1, nsg=3, data=b"a=b\0",
    )
    h = P.encode_header(resp)
    assert h[0] == 0x23
    assert h[1] == 0x80 | (1 << 2) | 3
    assert h[5:8] == b"\x00\x00\x04"
    assert h[8:14] == bytes.fromhex("80123456789a")
    assert h[14:16] == b"\x01\x02"
    assert h[36:38] == b"\x02\x01"


def test_data_in_status_and_r2t_layout() -> None:
    din = P.DataIn(itt=1, final=True, status_present=True, status=0x02, residual_underflow=True)
    h = P.encode_header(din)
    assert h[1] == 0x80 | 0x02 | 0x01
    assert h[3] == 0x02
    r2t = P.R2T(itt=1, ttt=2, r2t_sn=3, buffer_offset=4, desired_data_transfer_length=5)
    assert struct.unpack(">III", P.encode_header(r2t)[36:48]) == (3, 4, 5)


@pytest.mark.parametrize(
    ("lun", "raw"),
    [(0, "0000000000000000"), (5, "0005000000000000"), (255, "00ff000000000000"),
     (256, "4100000000000000"), (16383, "7fff000000000000")],
)
def test_lun_encoding(lun: int, raw: str) -> None:
    assert P.encode_lun(lun) == bytes.fromhex(raw)
    assert P.decode_lun(bytes.fromhex(raw)) == lun


def test_unsupported_lun_formats_decode_negative_and_round_trip() -> None:
    raw = bytes.fromhex("0105000000000000")  # bus 1
    lun = P.decode_lun(raw)
    assert lun < 0
    assert P.encode_lun(lun) == raw
    with pytest.raises(ProtocolError, match="LUN field is 7 bytes"):
        P.decode_lun(raw[:7])
    with pytest.raises(ValueError, match="beyond flat-space"):
        P.encode_lun(16384)


def test_errors_name_the_problem() -> None:
    good = P.encode_header(P.NopOut(data=b"abcd"))
    with pytest.raises(ProtocolError, match="unknown opcode 0x07") as unknown:
        P.decode_pdu(b"\x07" + good[1:], b"", b"abcd")
    # What answers it is decided here, not by reading the message.
    assert unknown.value.reject is RejectReason.COMMAND_NOT_SUPPORTED
    with pytest.raises(ProtocolError, match="announces 4 bytes, got 3") as short:
        P.decode_pdu(good, b"", b"abc")
    assert short.value.reject is RejectReason.PROTOCOL_ERROR
    with pytest.raises(ProtocolError, match="BHS is 47 bytes"):
        P.decode_pdu(good[:47], b"", b"abcd")
    tmf = bytearray(P.encode_header(P.TaskMgmtRequest(function=1)))
    tmf[7] = 2
    with pytest.raises(ProtocolError, match="TASK_MGMT_REQUEST with a 2-byte data segment"):
        P.decode_pdu(bytes(tmf), b"", b"xx")
    nop = bytearray(good)
    nop[4] = 1
    with pytest.raises(ProtocolError, match="AHS present on NOP_OUT"):
        P.decode_pdu(bytes(nop), b"\0\0\0\0", b"abcd")


def test_bad_ahs() -> None:
    h = bytearray(P.encode_header(P.ScsiCommand()))
    h[4] = 1
    with pytest.raises(ProtocolError, match="unknown AHSType 9"):
        P.decode_pdu(bytes(h), b"\x00\x01\x09\x00", b"")
    with pytest.raises(ProtocolError, match="overruns TotalAHSLength"):
        P.decode_pdu(bytes(h), b"\x00\x09\x01\x00", b"")
    with pytest.raises(ProtocolError, match="AHSLength 4, expected 5"):
        h[4] = 2
        P.decode_pdu(bytes(h), b"\x00\x04\x02\x00\x00\x00\x00\x00", b"")


def test_memoryview_data_is_not_copied() -> None:
    backing = bytearray(b"payload!")
    view = memoryview(backing)
    out = P.DataOut(data=view)
    h = P.encode_header(out)
    decoded = P.decode_pdu(h, b"", view)
    assert isinstance(decoded, P.DataOut)
    assert decoded.data is view


def test_sense_segment() -> None:
    seg = P.sense_segment(b"\x70\x00\x05")
    assert seg == b"\x00\x03\x70\x00\x05"
    assert P.parse_sense_segment(seg) == b"\x70\x00\x05"
    assert P.parse_sense_segment(b"") == b""
    with pytest.raises(ProtocolError, match="SenseLength 9 exceeds the 3 bytes"):
        P.parse_sense_segment(b"\x00\x09abc")


def test_opcode_of_every_class_matches_wire() -> None:
    for cls in PDU_TYPES:
        assert P.encode_header(cls())[0] & 0x3F == cls.OPCODE
    assert {cls.OPCODE for cls in PDU_TYPES} == set(Opcode)
