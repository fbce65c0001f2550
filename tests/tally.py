"""A count a test can wait on: the increment wakes whoever waits for the figure, so a test
waits for the event that matters (N writes done, a reconnection, a failure) instead of
looking at a counter every few milliseconds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["Tally", "count_calls"]


class Tally:
    def __init__(self) -> None:
        self.count = 0
        self._waits: list[tuple[int, asyncio.Future[None]]] = []

    def add(self) -> None:
        self.count += 1
        if self._waits:
            left = []
            for figure, waiter in self._waits:
                if self.count < figure:
                    left.append((figure, waiter))
                elif not waiter.done():
                    waiter.set_result(None)
            self._waits = left

    async def reach(self, figure: int) -> None:
        """Once the count is at least `figure` (at once if it is)."""
        if self.count >= figure:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waits.append((figure, waiter))
        await waiter


def count_calls(obj: object, name: str) -> Tally:
    """Each call of `obj.name` (an instance's method, on the loop's thread) counted after it
    returns: the instance's attribute wraps the method, nothing else changes."""
    method: Callable[..., Any] = getattr(obj, name)
    tally = Tally()

    def counted(*args: Any, **kwargs: Any) -> Any:
        result = method(*args, **kwargs)
        tally.add()
        return result

    setattr(obj, name, counted)
    return tally
