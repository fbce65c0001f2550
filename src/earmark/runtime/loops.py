"""What the runtime must know of the event loop it runs on: how its transports keep the
bytes they are handed (we refill the buffers at once), and which clock times the work
the loop does itself. Which loop runs is the command line's (``earmark.cli.loops``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence


def sender(transport: asyncio.WriteTransport) -> Callable[[Sequence[bytes | memoryview]], None]:
    """How to hand ``transport`` pieces whose buffers may be reused once the call returns.

    The target passes views of buffers it refills at once (a read's next window lands in
    the same slot buffer). The stdlib transports of Python 3.11 inherit
    ``WriteTransport.writelines``, which joins the pieces into one new bytes object, so
    what they keep unsent is a copy. uvloop's ``writelines`` (and asyncio's from Python
    3.12 on) keeps the unsent views themselves: the peer would then read the refilled
    buffer, another window's data, in place of this one's. For those the pieces are
    joined here, one copy per batch. A transport of our own that copies says so with
    ``COPIES_ON_WRITELINES = True``.
    """
    writelines = type(transport).writelines
    if writelines is asyncio.WriteTransport.writelines or getattr(
            transport, "COPIES_ON_WRITELINES", False):
        return transport.writelines
    return lambda pieces: transport.write(b"".join(pieces))


def stopwatch(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """The clock that times work ``loop`` does itself (a write the target runs on the loop).

    Not ``loop.time()``: uvloop's is read once per iteration, so a call timed with it takes
    no time. A loop that keeps its own time says so with a ``stopwatch`` method: the
    simulator's virtual clock, on which a call takes no time, so its runs stay the same run.
    """
    own: Callable[[], float] | None = getattr(loop, "stopwatch", None)
    return own if own is not None else time.perf_counter
