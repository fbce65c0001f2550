"""The level validator: turns a breach of the reserve discipline into an error at once.

A breach does not deadlock every run; it deadlocks the unlucky one. Tests switch
this on so that the breach fails the test that commits it, deterministically,
instead of a rare hang much later.
"""

from __future__ import annotations

from earmark.memory.arena import Arena, format_bytes
from earmark.memory.errors import LevelOrderError


def check_level_order(arena: Arena, owner: str, levels: list[int], is_reservation: bool) -> None:
    """Raise if `owner` may wait for `levels` while holding what the discipline forbids."""
    asked = ", ".join(arena.levels(lvl).name for lvl in levels)
    plain = arena.plain_bytes_of(owner)
    if plain:
        raise LevelOrderError(
            f"{owner} may wait for {asked} while holding {format_bytes(plain)} of "
            f"{arena.name} memory outside any reservation: under `reserve`, memory comes "
            "only from reservations made while holding nothing"
        )
    held = [
        lvl
        for res in arena.reservations_of(owner)
        for lvl in range(len(res.budget))
        if res.budget[lvl] or res.held[lvl]
    ]
    if held and max(levels) >= min(held):
        top = arena.levels(min(held)).name
        kind = "a reservation" if is_reservation else "memory"
        raise LevelOrderError(
            f"{owner} holds a reservation at {top} and asks for {kind} at {asked}: a holder "
            f"of {top} never waits for {top} or deeper; reserve all the work needs at once, "
            "or hand what is held to another owner first"
        )


def enable(arena: Arena) -> None:
    """Switch the validator on for `arena` (tests do; production need not pay for it)."""
    arena.validator = check_level_order
