"""Waiting on the loop itself: for a state the code under test reaches by callbacks
alone (no timer, no I/O), a bounded number of loop turns, not a sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["wait_for"]


async def wait_for(what: Callable[[], bool]) -> bool:
    """Let the loop run until `what` holds (False if it never does)."""
    for _ in range(100_000):
        if what():
            return True
        await asyncio.sleep(0)
    return False
