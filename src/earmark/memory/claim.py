"""A claim: bytes per level asked for at once, checked and summed once.

Hot paths (every dirtied page, every admitted command) make the same claim
over and over; building it once keeps validation off the fast path.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum


class Claim:
    __slots__ = ("amounts", "pairs", "total")

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
        #: The nonzero levels and their amounts: what moving the claim between
        #: reservations walks (most claims touch two or three of the levels).
        self.pairs = tuple((lvl, n) for lvl, n in enumerate(amounts) if n)
        self.total = total

    def levels(self) -> list[int]:
        """The levels with a nonzero amount, shallowest first."""
        return [lvl for lvl, _ in self.pairs]
