"""The simulator's network: TCP-like byte streams between protocols on one virtual-time loop.

The initiator and the target open connections and listen with the loop's own
calls (``create_connection``, ``create_server``); on a
:class:`~earmark.runtime.virtualtime.VirtualTimeLoop` those calls land here, so
the same runtime code (BufferedProtocols, pause/resume of reading, batching
writers) runs unchanged on a network that is only timers.

A link has a one-way latency and a bandwidth: bytes written leave when the link
is free, in order, and arrive ``latency`` later. A receiver that pauses reading
(the target admitting nothing more, an initiator whose receive path waits for
memory) leaves later bytes queued until it resumes, as a full socket buffer
would; there is no window, so a sender is never blocked (its bytes are held
outside every arena, as the kernel's would be).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["SimNetwork", "SimServer", "SimTransport"]

Address = tuple[str, int]


class SimTransport(asyncio.Transport):
    """One end of a simulated connection."""

    def __init__(self, network: SimNetwork, protocol: asyncio.BaseProtocol,
                 local: Address, remote: Address) -> None:
        super().__init__()
        self._network = network
        self._loop = network.loop
        self._protocol = protocol
        self._extra = {"sockname": local, "peername": remote}
        self.peer: SimTransport | None = None
        self._link_free = 0.0  # when our outgoing link has sent everything queued
        self._closing = False
        self._gone = False  # connection_lost delivered
        self._paused = False
        self._inbox: deque[bytes] = deque()
        self._draining = False

    # ------------------------------------------------------------ asyncio.Transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writelines((data,))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        if self._closing:
            return
        data = b"".join(list_of_data)  # the caller reuses its buffers: the wire has a copy
        peer = self.peer
        if not data or peer is None:
            return
        net = self._network
        leaves = max(self._loop.time(), self._link_free) + len(data) / net.bandwidth
        self._link_free = leaves
        self._loop.call_at(leaves + net.latency, peer._arrive, data)

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_reading(self) -> bool:
        return not self._paused

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._inbox and not self._draining:
                self._draining = True
                self._loop.call_soon(self._drain)

    def close(self) -> None:
        """Closed after what was written arrives: the peer then sees the end of the stream."""
        if self._closing:
            return
        self._closing = True
        peer = self.peer
        if peer is not None:
            when = max(self._loop.time(), self._link_free) + self._network.latency
            self._loop.call_at(when, peer._remote_closed)
        self._loop.call_soon(self._lost, None)

    def abort(self) -> None:
        """Reset: nothing more is delivered either way."""
        self._closing = True
        self._inbox.clear()
        peer = self.peer
        if peer is not None and not peer._gone:
            peer._closing = True
            peer._inbox.clear()
            self._loop.call_soon(peer._lost, ConnectionResetError("connection reset by peer"))
        self._loop.call_soon(self._lost, None)

    # ------------------------------------------------------------ receiving

    def _arrive(self, data: bytes) -> None:
        if self._gone or self._closing:
            return
        self._inbox.append(data)
        if not self._paused and not self._draining:
            self._drain()

    def _drain(self) -> None:
        """Hand queued bytes to the protocol until it has them all or pauses reading."""
        self._draining = False
        protocol = self._protocol
        inbox = self._inbox
        while inbox and not self._paused and not self._gone:
            data = inbox.popleft()
            if isinstance(protocol, asyncio.BufferedProtocol):
                view = memoryview(data)
                at = 0
                while at < len(view):
                    if self._paused or self._gone:
                        inbox.appendleft(bytes(view[at:]))
                        return
                    buf = memoryview(protocol.get_buffer(len(view) - at)).cast("B")
                    n = min(len(buf), len(view) - at)
                    buf[:n] = view[at : at + n]
                    at += n
                    protocol.buffer_updated(n)
            else:
                assert isinstance(protocol, asyncio.Protocol)
                protocol.data_received(data)

    def _remote_closed(self) -> None:
        if self._gone:
            return
        if self._inbox:  # deliver what came before the end of the stream first
            self._loop.call_soon(self._remote_closed)
            if not self._paused and not self._draining:
                self._drain()
            return
        protocol = self._protocol
        keep_open = isinstance(protocol, asyncio.Protocol | asyncio.BufferedProtocol) and \
            protocol.eof_received()
        if not keep_open:
            self._closing = True
            self._lost(None)

    def _lost(self, exc: Exception | None) -> None:
        if not self._gone:
            self._gone = True
            self._protocol.connection_lost(exc)


class _SimSocket:
    """What ``Server.sockets`` is asked for: the listening address."""

    def __init__(self, address: Address) -> None:
        self._address = address

    def getsockname(self) -> Address:
        return self._address


class SimServer:
    """A listener on the simulated network; what ``create_server`` returns there."""

    def __init__(self, network: SimNetwork, address: Address,
                 factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self._network = network
        self.address = address
        self.factory = factory
        self.sockets = [_SimSocket(address)]
        self._serving = True

    def is_serving(self) -> bool:
        return self._serving

    def close(self) -> None:
        if self._serving:
            self._serving = False
            self._network.unlisten(self.address)

    async def wait_closed(self) -> None:
        return None


class SimNetwork:
    """Every listener and connection of one simulation."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, latency: float = 50e-6,
                 bandwidth: float = 1.25e9) -> None:
        """``latency`` one way, in seconds; ``bandwidth`` in bytes per second."""
        if latency < 0 or bandwidth <= 0:
            raise ValueError("a simulated link needs latency >= 0 and bandwidth > 0")
        self.loop = loop
        self.latency = latency
        self.bandwidth = bandwidth
        self._listeners: dict[Address, SimServer] = {}
        self._ports = itertools.count(49152)

    def listen(self, host: str, port: int,
               factory: Callable[[], asyncio.BaseProtocol]) -> SimServer:
        if not port:
            port = next(self._ports)
        address = (host, port)
        if address in self._listeners:
            raise OSError(98, f"address {host}:{port} already in use on the simulated network")
        server = self._listeners[address] = SimServer(self, address, factory)
        return server

    def unlisten(self, address: Address) -> None:
        self._listeners.pop(address, None)

    async def connect(self, factory: Callable[[], asyncio.BaseProtocol], host: str,
                      port: int) -> tuple[SimTransport, asyncio.BaseProtocol]:
        await asyncio.sleep(2 * self.latency)  # SYN, SYN-ACK
        listener = self._listeners.get((host, port))
        if listener is None:
            raise ConnectionRefusedError(111, f"nothing listens on {host}:{port} "
                                              "(simulated network)")
        local = (host, next(self._ports))
        client = factory()
        server = listener.factory()
        ours = SimTransport(self, client, local, (host, port))
        theirs = SimTransport(self, server, (host, port), local)
        ours.peer, theirs.peer = theirs, ours
        server.connection_made(theirs)
        client.connection_made(ours)
        return ours, client
