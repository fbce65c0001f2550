"""What the page cache needs of a block device: I/O, and what each command costs in memory.

The cache reserves a page's writeback memory when the page becomes dirty, so it
must know, before any I/O, what writing a page back will take on the way down:
the device answers with `command_cost`. The real one is the iSCSI initiator
(command PDU, Data-Out headers, R2T and response buffers); `ModelDevice` is an
in-memory stand-in that draws exactly the same way, for tests and simulation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Protocol


class StillInFlight(asyncio.CancelledError):
    """The task waiting for an I/O was cancelled, but the I/O goes on: the target may
    still read the pages written from or write into the page read into. Whoever owns
    those buffers keeps them, and the memory they draw on, until `ended` is done (its
    result: the error the I/O ended with, or None), as Linux keeps a page under
    writeback or locked until its bio completes, whoever submitted it. A plain
    CancelledError from a device means nothing of its I/O is in flight: it never
    started, or it is over (whether it took effect is not known)."""

    def __init__(self, ended: asyncio.Future[Exception | None]) -> None:
        super().__init__("cancelled with its I/O still in flight")
        self.ended = ended


class PageDevice(Protocol):
    @property
    def block_size(self) -> int: ...

    @property
    def size(self) -> int: ...

    def command_cost(self, write: bool, nbytes: int) -> Mapping[int, int]:
        """Bytes per level (TASK, WIRE) one command moving `nbytes` draws.

        Must not grow faster than linearly: k one-page commands cost at least as
        much as one k-page command, so per-page shares always cover a merge.
        """
        ...

    # Awaitables rather than coroutine functions: a device may hand back the coroutine
    # of its own command path instead of one more that only forwards to it.
    def write_pages(self, offset: int, pages: list[memoryview], *,
                    owner: str) -> Awaitable[object]:
        """Write contiguous pages at `offset`; draws via earmark.memory.draw. Cancelled
        once the write has started, it raises StillInFlight."""
        ...

    def read_page(self, offset: int, page: memoryview, *, owner: str) -> Awaitable[object]: ...

    async def flush(self, *, owner: str) -> None: ...
