"""Serial number arithmetic (RFC 1982) for the iSCSI sequence numbers, across the wrap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from earmark.iscsi.serial import sn_diff, sn_le

U32 = st.integers(0, 0xFFFFFFFF)


def test_wrap() -> None:
    assert sn_diff(0, 0xFFFFFFFF) == 1 and sn_diff(0xFFFFFFFF, 0) == -1
    assert sn_le(0xFFFFFFFF, 0) and not sn_le(0, 0xFFFFFFFF)
    assert sn_diff(5, 5) == 0 and sn_le(5, 5)
    assert sn_diff(0x80000000, 0) == -(1 << 31)  # half way round: "before", by RFC 1982


@given(U32, st.integers(-(1 << 31) + 1, (1 << 31) - 1))
def test_distance_and_order_agree(a: int, step: int) -> None:
    b = (a + step) & 0xFFFFFFFF
    assert sn_diff(b, a) == step
    assert sn_le(a, b) == (step >= 0)
