"""Deeper layers get memory through here, whatever the policy.

Under `reserve`, the work arrives with a reservation made before it was
admitted, and a deeper layer only draws on it: it cannot wait. Under the other
policies there is none, and the same call allocates from the arena, which may
wait (and reclaim) exactly as a real kernel's allocation on that path would.
One call site per buffer, so the policies differ in one place, not in every layer.
"""

from __future__ import annotations

from earmark.memory.allocation import Buffer, Charge
from earmark.memory.arena import Arena
from earmark.memory.reservation import handed_down


async def draw_buffer(arena: Arena, level: int, nbytes: int, *, owner: str) -> Buffer:
    res = handed_down()
    if res is not None:
        return res.take(level, nbytes)
    return await arena.allocate(level, nbytes, owner=owner)


async def draw_charge(arena: Arena, level: int, nbytes: int, *, owner: str) -> Charge:
    res = handed_down()
    if res is not None:
        return res.charge(level, nbytes)
    return await arena.allocate_charge(level, nbytes, owner=owner)
