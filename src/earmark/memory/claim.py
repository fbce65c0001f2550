"""A claim: bytes per level asked for at once, checked and summed once.

Hot paths (every dirtied page, every admitted command) make the same claim
over and over; building it once keeps validation off the fast path.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum


class Claim:
    __slots__ = ("amounts", "total")

    def __init__(self, claims: Mapping[int, int], levels: type[IntEnum]) -> None:
        count = len(levels)
        amounts = [0] * count
        total = 0
        for lvl, n in claims.items():
            if n < 0 or not 0 <= lvl < count:
                raise ValueError(
                    f"cannot claim {n} B at level {lvl}: levels are "
                    f"{[m.name for m in levels]}, amounts are not negative"
                )
            amounts[lvl] += n
            total += n
        #: Bytes per level, indexed by level number.
        self.amounts = amounts
        self.total = total

    def levels(self) -> list[int]:
        """The levels with a nonzero amount, shallowest first."""
        return [lvl for lvl, n in enumerate(self.amounts) if n]
