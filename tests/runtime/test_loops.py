"""What the target hands a transport is what the peer reads, on every event loop, even when
the buffer it came from is refilled before the transport has sent it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from earmark.runtime import loops

#: More than a socket pair buffers, so most of it stays queued in the transport.
BIG = 8 << 20


async def send_then_refill() -> bytes:
    """Send a buffer of A's through `loops.sender`, refill it with B's at once (as a read's
    next window does), and return what the other end receives."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    try:
        buf = bytearray(b"A" * BIG)
        loops.sender(transport)([memoryview(buf)])
        assert transport.get_write_buffer_size() > 0, "everything was sent: nothing tested"
        buf[:] = b"B" * BIG
        got = bytearray()
        while len(got) < BIG:
            got += await loop.sock_recv(theirs, 1 << 20)
        return bytes(got)
    finally:
        transport.close()
        theirs.close()


RUNNERS: dict[str, Callable[[Coroutine[Any, Any, bytes]], bytes]] = {
    "asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.mark.parametrize("loop", sorted(RUNNERS))
def test_a_refilled_buffer_never_reaches_the_peer(loop: str) -> None:
    got = RUNNERS[loop](send_then_refill())
    assert got.count(b"B") == 0 and got == b"A" * BIG


def test_transports_that_copy_are_trusted_to() -> None:
    class Copies(asyncio.Transport):
        COPIES_ON_WRITELINES = True

        def writelines(self, list_of_data: Any) -> None: ...

    class KeepsViews(asyncio.Transport):
        def writelines(self, list_of_data: Any) -> None: ...

    copies, keeps = Copies(), KeepsViews()
    assert loops.sender(copies) == copies.writelines
    assert loops.sender(keeps) != keeps.writelines
