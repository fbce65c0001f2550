"""How to hand an asyncio transport bytes whose buffers we refill at once: the one thing
the runtime must know about which event loop feeds it."""

from __future__ import annotations

import asyncio
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
