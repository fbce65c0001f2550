"""Connections that never log in cannot lock an initiator out, over real TCP.

Strangers that connect and send nothing (or half a header) hold one login PDU's buffer
each, not a session's; past their share of the arena the oldest are closed; none
outlives the login timeout; a good initiator logs in and does its I/O meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import threading
import weakref
from collections.abc import Callable, Iterator

import pytest

import earmark
from earmark.runtime.connection import TargetConnection
from earmark.runtime.embedded import EmbeddedTarget
from earmark.target.backing import MemoryBacking
from earmark.target.portal import PortalLimits
from tests.arena_settled import arena_settled

pytestmark = pytest.mark.tcp

MEMORY = 8 << 20


@pytest.fixture
def strangers() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def _connect(port: int, n: int, into: list[socket.socket], first: bytes = b"") -> None:
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if first:
            sock.sendall(first)
        into.append(sock)


def _closed_by_the_target(sock: socket.socket, within: float) -> bool:
    """True once the target closed `sock` (EOF or reset), False if `within` s went by."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _good_initiator(url: str) -> bytes:
    async def go() -> bytes:
        async with earmark.open(url, login_timeout=10) as dev:
            data = os.urandom(65536)
            await dev.write(0, data)
            assert await dev.read(0, len(data)) == data
            return data

    return asyncio.run(go())


def test_idle_strangers_past_their_share_go_oldest_first_and_an_initiator_gets_in(
    embedded_targets: Callable[..., EmbeddedTarget], strangers: list[socket.socket]
) -> None:
    target = embedded_targets(MemoryBacking(4 << 20), memory=MEMORY)
    portal = target.server.portal
    n = 3 * portal.max_logins
    _connect(target.server.port, n, strangers)
    _good_initiator(target.url)
    # Everything past the logins' share was closed, oldest first; the newest still wait.
    oldest, newest = strangers[: n - portal.max_logins], strangers[-portal.max_logins // 2 :]
    assert all(_closed_by_the_target(s, within=10) for s in oldest)
    assert not any(_closed_by_the_target(s, within=0.05) for s in newest)
    # What the strangers hold: a login PDU's buffer each, within 1/32 of the arena.
    held = target.arena.committed
    assert held <= MEMORY // 32 + 2 * sum(portal.connection_claim.values())


def test_a_login_that_does_not_finish_in_time_is_closed(
    embedded_targets: Callable[..., EmbeddedTarget], strangers: list[socket.socket]
) -> None:
    target = embedded_targets(MemoryBacking(4 << 20), memory=MEMORY,
                              limits=PortalLimits(login_timeout=0.5))
    idle = target.arena.committed
    _connect(target.server.port, 3, strangers)
    _connect(target.server.port, 3, strangers, first=b"\x43\x87\x00")  # half a login header
    assert all(_closed_by_the_target(s, within=10) for s in strangers)
    # A good login is quicker than that, and its session outlives the timeout.
    _good_initiator(target.url)
    asyncio.run(arena_settled(target, idle))


def test_past_max_connections_only_strangers_make_room(
    embedded_targets: Callable[..., EmbeddedTarget], strangers: list[socket.socket]
) -> None:
    target = embedded_targets(MemoryBacking(4 << 20), memory=MEMORY,
                              limits=PortalLimits(max_connections=4))
    _connect(target.server.port, 4, strangers)
    _good_initiator(target.url)  # closes the oldest stranger to get in
    assert _closed_by_the_target(strangers[0], within=10)
    assert not _closed_by_the_target(strangers[-1], within=0.05)


def test_connections_are_freed_when_they_close_not_by_the_cyclic_collector(
    embedded_targets: Callable[..., EmbeddedTarget], strangers: list[socket.socket]
) -> None:
    """A reference cycle through a connection leaves it to the cyclic collector, which
    under a flood of short connections lets thousands of dead ones pile up: the
    allocator's arenas they spread over then stay resident after they are gone. Nothing
    of the target's is left for that collector: neither connections nor their parts."""
    target = embedded_targets(MemoryBacking(4 << 20), memory=MEMORY)
    idle = target.arena.committed
    gc.collect()
    gc.disable()
    try:
        _connect(target.server.port, 8, strangers)
        _connect(target.server.port, 2, strangers, first=b"\x43\x87\x00")
        _good_initiator(target.url)  # a whole session's life: login, I/O, logout
        conns = [o for o in gc.get_objects() if isinstance(o, TargetConnection)]
        assert len(conns) >= len(strangers)
        # Each connection's death is the event: its finalizer runs on the target's thread
        # the moment refcounting frees it (never, with the collector off, if in a cycle).
        alive = len(conns)
        all_gone = threading.Event()
        lock = threading.Lock()

        def gone() -> None:
            nonlocal alive
            with lock:
                alive -= 1
                if not alive:
                    all_gone.set()

        for conn in conns:
            weakref.finalize(conn, gone)
        del conns, conn
        for sock in strangers:
            sock.close()
        asyncio.run(arena_settled(target, idle))
        assert all_gone.wait(10), f"{alive} closed connections were never freed"
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = {f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage}
        assert {name for name in left if name.startswith("earmark.target")} == set()
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
