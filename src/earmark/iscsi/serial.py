"""Serial number arithmetic (RFC 1982, 32 bits), as RFC 7143 §4.2.2 requires for
CmdSN, ExpCmdSN, MaxCmdSN, StatSN and DataSN.

The counters wrap, so plain comparisons break after 2**32 PDUs; both ends of a
session must agree on the wrapped order, which is why one module serves the
initiator and the target.
"""

from __future__ import annotations

__all__ = ["sn_diff", "sn_le"]

_MASK = 0xFFFFFFFF
_HALF = 1 << 31


def sn_diff(a: int, b: int) -> int:
    """a - b as a signed distance in [-2**31, 2**31): negative when a comes before b."""
    return ((a - b + _HALF) & _MASK) - _HALF


def sn_le(a: int, b: int) -> bool:
    """a <= b: b is a, or at most 2**31 - 1 steps after it."""
    return ((b - a) & _MASK) < _HALF
