"""Waiting for a target's arena to return to its idle figure, the check that a fault,
a failed command or a lost session leaked no reservation."""

from __future__ import annotations

import asyncio

from earmark.runtime.embedded import EmbeddedTarget

__all__ = ["arena_settled"]


async def arena_settled(target: EmbeddedTarget, idle: int) -> None:
    """The target's arena back at `idle` once its sessions are gone (their release runs
    on the target's own loop, so wait for it rather than look once); TimeoutError if not
    within 10 s."""
    async with asyncio.timeout(10):
        while target.arena.committed != idle:
            await asyncio.sleep(0.01)
