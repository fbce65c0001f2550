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


async def two_sends_with_refills() -> tuple[bytes, bytes]:
    """Several pieces, then more while the first send's tail still waits in the transport;
    every buffer refilled as soon as it was handed over. Returns (sent, received)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    send = loops.sender(transport)
    try:
        first = [bytearray(bytes([65 + i]) * (BIG // 4 + i)) for i in range(4)]
        header = b"header"
        want = header + b"".join(first)
        send([header, *(memoryview(b) for b in first)])
        assert transport.get_write_buffer_size() > 0, "everything was sent: nothing tested"
        for b in first:
            b[:] = b"x" * len(b)
        # Room in the socket again, before the transport could send its tail: the next
        # send must still queue behind that tail.
        theirs.setblocking(True)
        got = bytearray(theirs.recv(1 << 16))
        theirs.setblocking(False)
        second = bytearray(b"S" * 1000)
        send([memoryview(second)])
        want += bytes(second)
        second[:] = b"y" * 1000
        async with asyncio.timeout(30):
            while len(got) < len(want):
                got += await loop.sock_recv(theirs, 1 << 20)
        return want, bytes(got)
    finally:
        transport.close()
        theirs.close()


RUNNERS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {
    "asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.mark.parametrize("loop", sorted(RUNNERS))
def test_a_refilled_buffer_never_reaches_the_peer(loop: str) -> None:
    got = RUNNERS[loop](send_then_refill())
    assert got.count(b"B") == 0 and got == b"A" * BIG


@pytest.mark.parametrize("loop", sorted(RUNNERS))
def test_pieces_arrive_whole_and_in_order_behind_a_queued_tail(loop: str) -> None:
    want, got = RUNNERS[loop](two_sends_with_refills())
    assert got == want


def test_transports_that_copy_are_trusted_to() -> None:
    class Copies(asyncio.Transport):
        COPIES_ON_WRITELINES = True

        def writelines(self, list_of_data: Any) -> None: ...

    class KeepsViews(asyncio.Transport):
        def writelines(self, list_of_data: Any) -> None: ...

    copies, keeps = Copies(), KeepsViews()
    assert loops.sender(copies) == copies.writelines
    assert loops.sender(keeps) != keeps.writelines
