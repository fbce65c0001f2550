"""A blocking facade over the arena for threads (the sync block-device API).

The arena is single-threaded, like every asyncio object; a thread never touches
it directly. Each call here runs on the arena's event loop and the thread
blocks for the answer, so the books have exactly one writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Mapping
from typing import TypeVar

from earmark.memory.allocation import Allocation, Buffer
from earmark.memory.arena import Arena
from earmark.memory.reservation import Reservation

T = TypeVar("T")


class ThreadArena:
    __slots__ = ("arena", "loop")

    def __init__(self, arena: Arena, loop: asyncio.AbstractEventLoop) -> None:
        self.arena = arena
        self.loop = loop

    def reserve(
        self, claims: Mapping[int, int], *, owner: str, timeout: float | None = None
    ) -> Reservation:
        self._check_thread()
        return asyncio.run_coroutine_threadsafe(
            self.arena.reserve(claims, owner=owner, timeout=timeout), self.loop
        ).result()

    def allocate(
        self, level: int, nbytes: int, *, owner: str, timeout: float | None = None
    ) -> Buffer:
        self._check_thread()
        return asyncio.run_coroutine_threadsafe(
            self.arena.allocate(level, nbytes, owner=owner, timeout=timeout), self.loop
        ).result()

    def take(self, res: Reservation, level: int, nbytes: int) -> Buffer:
        return self.call(res.take, level, nbytes)

    def free(self, alloc: Allocation) -> None:
        self.call(alloc.free)

    def release(self, res: Reservation, claims: Mapping[int, int] | None = None) -> None:
        self.call(res.release, claims)

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the arena's loop and return (or raise) what it did."""
        self._check_thread()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result()

    def _check_thread(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if running is self.loop:
            raise RuntimeError(
                "ThreadArena called from its own event loop's thread would block the loop "
                "forever: await the Arena directly there"
            )
