"""key=value text codec and C-bit accumulation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from earmark.iscsi.errors import ProtocolError
from earmark.iscsi.text import TextAccumulator, decode_text, encode_text, split_text

KEYS = st.text("ABCXYZabcxyz0189.-+@_", min_size=1, max_size=63)
VALUES = st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]),
                 max_size=60)
PAIRS = st.lists(st.tuples(KEYS, VALUES), max_size=12)


@given(PAIRS)
def test_round_trip(pairs: list[tuple[str, str]]) -> None:
    assert decode_text(encode_text(pairs)) == pairs


@given(PAIRS, st.integers(1, 40))
def test_split_and_accumulate(pairs: list[tuple[str, str]], seg: int) -> None:
    pieces = split_text(encode_text(pairs), seg)
    acc = TextAccumulator()
    for piece in pieces[:-1]:
        assert acc.add(piece, continue_=True) is None
        assert acc.pending
    assert acc.add(pieces[-1], continue_=False) == pairs
    assert not acc.pending


@given(st.binary(max_size=200))
def test_garbage_raises_only_protocol_error(blob: bytes) -> None:
    try:
        decode_text(blob)
    except ProtocolError as exc:
        assert exc.reason


def test_wire_format_and_repeated_keys() -> None:
    pairs = [("TargetName", "iqn.a"), ("TargetAddress", "1.2.3.4:3260,1"),
             ("TargetName", "iqn.b")]
    assert encode_text(pairs) == (
        b"TargetName=iqn.a\0TargetAddress=1.2.3.4:3260,1\0TargetName=iqn.b\0"
    )
    assert decode_text(encode_text(pairs)) == pairs
    assert decode_text(b"a=b\0\0\0") == [("a", "b")]  # trailing NUL padding tolerated


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"a=b", "does not end with a NUL"),
        (b"a=b\0\0c=d\0", "empty text entry at offset 4"),
        (b"novalue\0", "'novalue' at offset 0 has no '='"),
        (b"=x\0", "empty key"),
        (b"bad key=x\0", "forbids"),
        (b"K" * 64 + b"=x\0", "64 bytes, longer than 63"),
        (b"MaxBurstLength=" + b"9" * 256 + b"\0", "value of MaxBurstLength is 256 bytes"),
        (b"a=\xff\0", "not valid UTF-8"),
    ],
)
def test_errors(blob: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_text(blob)


def test_long_values_allowed_for_chap() -> None:
    challenge = "0x" + "ab" * 1024
    assert decode_text(encode_text([("CHAP_C", challenge)])) == [("CHAP_C", challenge)]
    with pytest.raises(ValueError, match="longer than 255"):
        encode_text([("TargetAlias", "x" * 256)])


def test_accumulator_limit() -> None:
    acc = TextAccumulator(limit=10)
    acc.add(b"a=123456", continue_=True)
    with pytest.raises(ProtocolError, match="12 bytes, more than 10"):
        acc.add(b"78\0\0", continue_=False)
    assert not acc.pending
