"""Sense data: the exact fixed-format bytes a target sends, and parsing of both formats."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from earmark.scsi.sense import (
    Asc,
    ScsiError,
    SenseFormatError,
    SenseKey,
    asc_words,
    build_descriptor_sense,
    build_fixed_sense,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    invalid_opcode,
    lba_out_of_range,
    miscompare,
    parse_sense,
)


def test_error_text_names_key_and_code() -> None:
    assert str(lba_out_of_range()) == (
        "ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE (0x05/0x2100)"
    )
    assert str(invalid_opcode()) == (
        "ILLEGAL REQUEST: INVALID COMMAND OPERATION CODE (0x05/0x2000)"
    )
    assert asc_words(0x9999) == "ASC 0x99 ASCQ 0x99"


def test_fixed_sense_layout_for_invalid_field() -> None:
    sense = invalid_field_in_cdb(2, 7).sense()
    assert len(sense) == 18
    assert sense[0] == 0x70  # current error, fixed format, no INFORMATION
    assert sense[2] == SenseKey.ILLEGAL_REQUEST
    assert sense[7] == 10  # additional sense length: bytes 8..17
    assert (sense[12], sense[13]) == (0x24, 0x00)
    assert sense[15] == 0x80 | 0x40 | 0x08 | 7  # SKSV, C/D, BPV, bit 7
    assert sense[16:18] == b"\x00\x02"


def test_parameter_list_pointer_has_cd_clear() -> None:
    sense = invalid_field_in_parameter_list(8).sense()
    assert sense[15] == 0x80 and sense[16:18] == b"\x00\x08"
    parsed = parse_sense(sense)
    assert parsed.field == 8 and not parsed.in_cdb and parsed.bit is None


def test_no_sense_key_specific_without_field() -> None:
    sense = lba_out_of_range().sense()
    assert sense[15:18] == b"\0\0\0"
    assert parse_sense(sense).field is None


def test_miscompare_carries_offset_in_information() -> None:
    sense = miscompare(4321).sense()
    assert sense[0] == 0xF0  # VALID
    assert int.from_bytes(sense[3:7], "big") == 4321
    parsed = parse_sense(sense)
    assert parsed.key == SenseKey.MISCOMPARE
    assert parsed.code == Asc.MISCOMPARE_DURING_VERIFY_OPERATION
    assert parsed.information == 4321


def test_information_too_big_for_fixed_format_is_left_out() -> None:
    sense = build_fixed_sense(SenseKey.MEDIUM_ERROR, 0x1100, information=1 << 40)
    assert sense[0] == 0x70 and sense[3:7] == b"\0\0\0\0"


def test_descriptor_sense_parses_information_and_pointer() -> None:
    info = bytes((0x00, 0x0A, 0x80, 0)) + (77).to_bytes(8, "big")
    sks = bytes((0x02, 0x06, 0, 0, 0x80 | 0x40, 0x00, 0x01, 0))
    body = info + sks
    data = bytes((0x72, 0x05, 0x24, 0x00, 0, 0, 0, len(body))) + body
    parsed = parse_sense(data)
    assert parsed.key == SenseKey.ILLEGAL_REQUEST and parsed.code == 0x2400
    assert parsed.information == 77 and parsed.field == 1 and parsed.in_cdb


def test_descriptor_builder_round_trips() -> None:
    parsed = parse_sense(build_descriptor_sense(SenseKey.NO_SENSE, 0))
    assert parsed.key == SenseKey.NO_SENSE and parsed.code == 0


@pytest.mark.parametrize("data", [b"", b"\x70", b"\x70" + bytes(5), b"\x12" + bytes(20)])
def test_garbage_is_a_format_error(data: bytes) -> None:
    with pytest.raises(SenseFormatError):
        parse_sense(data)


@given(st.binary(max_size=64))
def test_parse_raises_nothing_but_format_error(data: bytes) -> None:
    with contextlib.suppress(SenseFormatError):
        parsed = parse_sense(data)
        assert 0 <= parsed.asc <= 0xFF and 0 <= parsed.ascq <= 0xFF


@given(
    st.sampled_from(list(SenseKey)),
    st.integers(0, 0xFFFF),
    st.one_of(st.none(), st.integers(0, 0xFFFF)),
    st.one_of(st.none(), st.integers(0, 7)),
)
def test_fixed_round_trip(key: SenseKey, code: int, field: int | None, bit: int | None) -> None:
    error = ScsiError(key, code >> 8, code & 0xFF, field=field, bit=bit)
    parsed = parse_sense(error.sense())
    assert (parsed.key, parsed.code) == (key, code)
    if key == SenseKey.ILLEGAL_REQUEST and field is not None:
        assert parsed.field == field and parsed.bit == bit
    assert str(parsed.error()) == str(error)
