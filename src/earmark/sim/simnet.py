"""The simulator's network: TCP-like byte streams between protocols on one virtual-time loop.

The initiator and the target open connections and listen with the loop's own
calls (``create_connection``, ``create_server``); on a
:class:`~earmark.sim.virtualtime.VirtualTimeLoop` those calls land here, so
the same runtime code (BufferedProtocols, pause/resume of reading, batching
writers) runs unchanged on a network that is only timers.

The links' model (latency, jitter, bandwidth, windows and send buffers, faults,
what waits for a paused reader, who listens) is :mod:`earmark.sim.links`; this
module only schedules its answers on the loop and carries them to the protocols
(bytes, ``pause_writing``, ``resume_writing``). Bytes a sender wrote are held
outside every arena, as the kernel's would be.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from earmark.sim.links import END, Address, Inbox, Link, LinkShape, Listeners, SimServer, Trace

__all__ = ["SimNetwork", "SimTransport"]


class SimTransport(asyncio.Transport):
    """One end of a simulated connection."""

    #: writelines copies (one join per call): the runtime may reuse its buffers at once.
    COPIES_ON_WRITELINES = True

    def __init__(self, network: SimNetwork, protocol: asyncio.BaseProtocol,
                 local: Address, remote: Address) -> None:
        super().__init__()
        self._network = network
        self._loop = network.loop
        self._protocol = protocol
        self._extra = {"sockname": local, "peername": remote}
        self.peer: SimTransport | None = None
        self._out = Link(network.shape, network.listeners.link_number())
        self._closing = False
        self._gone = False  # connection_lost delivered
        #: The end of the stream arrived behind bytes a paused reader has not taken: it
        #: is delivered after them, once the reader reads again (as a socket's FIN is).
        self._end_waits = False
        self._inbox = Inbox()

    # ------------------------------------------------------------ asyncio.Transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writelines((data,))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        if self._closing:
            return
        data = b"".join(list_of_data)  # the caller reuses its buffers: the wire has a copy
        peer = self.peer
        if not data or peer is None:
            return
        if self._out.write(self._loop.time(), data):
            self._protocol.pause_writing()
        self._network.wake(peer, self._out)

    def get_write_buffer_size(self) -> int:
        return self._out.buffered()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._out.limits(high, low)

    def is_reading(self) -> bool:
        return not self._inbox.paused

    def pause_reading(self) -> None:
        self._inbox.paused = True

    def resume_reading(self) -> None:
        if self._inbox.resume():
            self._loop.call_soon(self._drain)
        if self._end_waits:
            self._end_waits = False
            self._loop.call_soon(self._remote_closed)

    def close(self) -> None:
        """Closed after what was written arrives: the peer then sees the end of the stream."""
        if self._closing:
            return
        self._closing = True
        peer = self.peer
        if peer is not None:
            self._out.write(self._loop.time(), END)
            self._network.wake(peer, self._out)
        self._loop.call_soon(self._lost, None)

    def abort(self) -> None:
        """Reset: nothing more is delivered either way."""
        self._closing = True
        self._inbox.reset()
        self._out.reset()
        peer = self.peer
        if peer is not None and not peer._gone:
            peer._closing = True
            peer._inbox.reset()
            peer._out.reset()
            self._loop.call_soon(peer._lost, ConnectionResetError("connection reset by peer"))
        self._loop.call_soon(self._lost, None)

    # ------------------------------------------------------------ receiving

    def _arrive(self, link: Link) -> None:
        now = self._loop.time()
        for data in link.arrived(now):
            self._network.trace.delivered(now, link.number, data)
            if not data:
                self._remote_closed()
            elif not (self._gone or self._closing) and self._inbox.arrive(data):
                self._drain()
        self._network.wake(self, link)

    def _window(self, nbytes: int) -> None:
        """The peer read `nbytes` of ours: the window update has arrived."""
        if self._out.opened(self._loop.time(), nbytes) and not self._gone:
            self._protocol.resume_writing()
        if self.peer is not None:
            self._network.wake(self.peer, self._out)

    def _drain(self) -> None:
        """Hand queued bytes to the protocol until it has them all or pauses reading; the
        window update for what it took goes back to the sender."""
        protocol, inbox, taken = self._protocol, self._inbox, self._inbox.taken
        try:
            for data in inbox.chunks():
                if self._gone:
                    inbox.unread(data)
                    return
                if isinstance(protocol, asyncio.BufferedProtocol):
                    view = memoryview(data)
                    at = 0
                    while at < len(view):
                        if inbox.paused or self._gone:
                            inbox.unread(bytes(view[at:]))
                            return
                        buf = memoryview(protocol.get_buffer(len(view) - at)).cast("B")
                        n = min(len(buf), len(view) - at)
                        buf[:n] = view[at : at + n]
                        at += n
                        protocol.buffer_updated(n)
                else:
                    assert isinstance(protocol, asyncio.Protocol)
                    protocol.data_received(data)
        finally:  # an unbounded window has nothing to reopen: no update is sent
            if inbox.taken > taken and self.peer is not None and self._out.shape.window:
                self._loop.call_at(self._loop.time() + self._out.shape.latency,
                                   self.peer._window, inbox.taken - taken)

    def _remote_closed(self) -> None:
        if self._gone:
            return
        if self._inbox:  # deliver what came before the end of the stream first
            if self._inbox.paused:  # not polled for: the loop may go idle (a stall)
                self._end_waits = True
                return
            self._loop.call_soon(self._remote_closed)
            if not self._inbox.draining:
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


class SimNetwork:
    """Every listener and connection of one simulation."""

    def __init__(self, loop: asyncio.AbstractEventLoop, shape: LinkShape, trace: Trace) -> None:
        self.loop = loop
        self.shape = shape
        self.trace = trace
        self.listeners: Listeners[Callable[[], asyncio.BaseProtocol]] = Listeners()

    def wake(self, receiver: SimTransport, link: Link) -> None:
        """Have `receiver` take `link`'s next arrivals when they are due."""
        at = link.wake()
        if at is not None:
            self.loop.call_at(at, receiver._arrive, link)

    def listen(self, host: str, port: int,
               factory: Callable[[], asyncio.BaseProtocol]) -> SimServer:
        return SimServer(self.listeners, self.listeners.listen(host, port, factory))

    async def connect(self, factory: Callable[[], asyncio.BaseProtocol], host: str,
                      port: int) -> tuple[SimTransport, asyncio.BaseProtocol]:
        await asyncio.sleep(self.shape.handshake())
        server_factory = self.listeners.connect(host, port)
        local = (host, self.listeners.port())
        client = factory()
        server = server_factory()
        ours = SimTransport(self, client, local, (host, port))
        theirs = SimTransport(self, server, (host, port), local)
        ours.peer, theirs.peer = theirs, ours
        server.connection_made(theirs)
        client.connection_made(ours)
        return ours, client
