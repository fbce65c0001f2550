"""Waiting for a target's arena to return to its idle figure, the check that a fault,
a failed command or a lost session leaked no reservation.

The event is the arena's own: a claim for everything above `idle` is granted exactly
when what is committed has fallen to `idle` (the arena grants in order, once the head
fits), so the wait is one queued claim on the target's loop, not a look every few
milliseconds. Nothing else on that target may be asking for memory meanwhile: the
claim is at the head of the queue until it is granted."""

from __future__ import annotations

import asyncio

from earmark.memory import Arena
from earmark.runtime.embedded import EmbeddedTarget

__all__ = ["arena_settled", "arena_settled_from_thread"]


async def _down_to(arena: Arena, idle: int) -> int:
    """What the arena holds once a claim for all above `idle` is granted and returned."""
    first = next(iter(arena.levels))
    everything_above = arena.capacity - arena.emergency - idle
    if everything_above > 0:
        claim = await arena.reserve({first: everything_above}, owner="test: arena settled")
        claim.release()
    return arena.committed


async def arena_settled(target: EmbeddedTarget, idle: int) -> None:
    """The target's arena back at `idle` once its sessions are gone (their release runs
    on the target's own loop); TimeoutError if not within 10 s, AssertionError if it
    fell below `idle` (memory given back twice)."""
    done = asyncio.run_coroutine_threadsafe(_down_to(target.arena, idle), target.loop)
    async with asyncio.timeout(10):
        committed = await asyncio.wrap_future(done)
    assert committed == idle, f"the target's arena holds {committed} B, idle is {idle} B"


def arena_settled_from_thread(target: EmbeddedTarget, idle: int) -> None:
    """`arena_settled` for a test with no event loop of its own."""
    asyncio.run(arena_settled(target, idle))
