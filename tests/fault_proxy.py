"""A seeded fault-injecting TCP proxy, for what netem would do if these machines had it.

It listens on 127.0.0.1 (a free ephemeral port) and forwards each connection to one
upstream address, through a :class:`Plan`: every chunk is held for a delay plus
jitter and paced to a bandwidth cap (in order: TCP does not reorder), and once the
bytes a connection sent upstream pass a point drawn from the seed, one :class:`Fault`
hits it:

- ``STALL``: neither direction forwards for ``stall_s`` seconds, then both go on; the
  sockets stay open and what arrives meanwhile is held, in order (a peer that closes
  is still noticed);
- ``RESET``: both sides get a RST (SO_LINGER 0), as from a middlebox that lost state;
- ``DEAD_TO_TARGET`` / ``DEAD_TO_INITIATOR``: from then on the bytes going that way
  are swallowed, the other way still flows (a half-open path).

The fault hits the first ``strikes`` connections, each once (the later ones early:
a reconnect's login, or its first commands); connections after those are forwarded
as the plan's delay and cap say. The proxy runs on the caller's loop and records,
per connection, who ended it (:class:`End`) and whether a stall ran out first, so a
test can tell "the initiator gave up on a stalled connection" from "the stall ended".
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import socket
import struct
from collections import deque
from dataclasses import dataclass, field

__all__ = ["End", "Fault", "FaultProxy", "Plan"]

_CHUNK = 64 << 10


class Fault(enum.Enum):
    NONE = "none"
    STALL = "stall"
    RESET = "reset"
    DEAD_TO_TARGET = "dead-to-target"
    DEAD_TO_INITIATOR = "dead-to-initiator"


class End(enum.Enum):
    """Who ended a proxied connection."""

    INITIATOR = "initiator"  # the downstream peer closed or reset it
    TARGET = "target"  # the upstream peer closed or reset it
    RESET = "reset"  # the proxy's RESET fault
    PROXY = "proxy"  # the proxy stopped


@dataclass(frozen=True)
class Plan:
    """What the proxy does to the traffic, all of it drawn from ``seed``."""

    seed: int
    fault: Fault = Fault.NONE
    #: Every chunk is held this long, plus up to ``jitter_s`` more (uniform).
    delay_s: float = 0.0
    jitter_s: float = 0.0
    #: Each direction of each connection paced to this many bytes a second (0: no cap).
    rate_bytes_s: int = 0
    #: The fault hits the first connection once it sent this many bytes upstream (a
    #: point drawn in this range), and each of the next ``strikes - 1`` once it sent a
    #: number drawn from ``again_after``.
    fault_after: tuple[int, int] = (128 << 10, 512 << 10)
    strikes: int = 1
    again_after: tuple[int, int] = (0, 2048)
    #: How long a STALL lasts, unless a peer gives up first.
    stall_s: float = 60.0


@dataclass
class _Leg:
    """One direction of one connection: what waits to go out, and when each may."""

    writer: asyncio.StreamWriter
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    free_at: float = 0.0  # when the cap lets the next chunk start
    last_at: float = 0.0  # when the last chunk goes (later ones never go before it)
    dead: bool = False


class _Link:
    def __init__(self, number: int, strike_at: int | None, to_target: _Leg,
                 to_initiator: _Leg) -> None:
        self.number = number
        #: The fault hits once this many bytes went upstream (None: never).
        self.strike_at = strike_at
        self.bytes_up = 0
        self.to_target = to_target
        self.to_initiator = to_initiator
        self.flowing = asyncio.Event()
        self.flowing.set()
        #: A STALL on it lasted its ``stall_s``: nobody gave up on the connection.
        self.stall_ran_out = False
        self.ended: asyncio.Future[End] = asyncio.get_running_loop().create_future()

    def end(self, why: End) -> None:
        if not self.ended.done():
            self.ended.set_result(why)


class FaultProxy:
    """``async with FaultProxy(host, port, plan) as proxy``: :attr:`port` forwards there."""

    def __init__(self, upstream_host: str, upstream_port: int, plan: Plan) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.plan = plan
        # Two streams, so that where the faults hit does not depend on how many
        # chunks the jitter was drawn for before.
        self._points = random.Random(f"{plan.seed}/points")
        self._jitter = random.Random(f"{plan.seed}/jitter")
        self.port = 0
        self.bytes_to_target = 0
        #: Every connection accepted, in order, and how each one ended.
        self.links: list[_Link] = []
        #: The connections the fault hit (indexes into ``links``), in order.
        self.hits: list[int] = []
        self._server: asyncio.Server | None = None
        self._accepting: set[asyncio.Task[object]] = set()

    def __repr__(self) -> str:
        struck = [f"#{i} at {self.links[i].strike_at} B"
                  + (" (the stall ran out)" if self.links[i].stall_ran_out else "")
                  for i in self.hits]
        return f"FaultProxy({self.plan}, hit {struck}, ends {self.ends()})"

    def ends(self) -> list[str]:
        return [link.ended.result().value if link.ended.done() else "open"
                for link in self.links]

    def url_of(self, url: str) -> str:
        """``url`` (an iscsi:// URL to the upstream portal) through the proxy."""
        host, port = self.upstream
        portal = f"{host}:{port}"
        assert portal in url, (portal, url)
        return url.replace(portal, f"127.0.0.1:{self.port}", 1)

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for link in self.links:
            link.end(End.PROXY)
        accepting = set(self._accepting)
        if accepting:  # each closes its own sockets once its link ended
            await asyncio.wait(accepting, timeout=5)
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        await self._server.wait_closed()

    # ------------------------------------------------------------ a connection

    async def _accept(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._accepting.add(me)
        me.add_done_callback(self._accepting.discard)
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(down_w)
            return
        number = len(self.links)
        strike_at = None
        if self.plan.fault is not Fault.NONE and number < self.plan.strikes:
            span = self.plan.again_after if number else self.plan.fault_after
            strike_at = self._points.randrange(*span)
        link = _Link(number, strike_at, _Leg(up_w), _Leg(down_w))
        self.links.append(link)
        tasks = [asyncio.ensure_future(job) for job in (
            self._pump(link, down_r, link.to_target, End.INITIATOR),
            self._pump(link, up_r, link.to_initiator, End.TARGET),
            self._send(link, link.to_target),
            self._send(link, link.to_initiator))]
        why = await link.ended
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in (up_w, down_w):
            if why is End.RESET:
                _reset(writer)
            else:
                writer.close()

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, leg: _Leg,
                    eof: End) -> None:
        """Read one side, schedule each chunk on the other; the reader's end ends the link."""
        loop = asyncio.get_running_loop()
        plan = self.plan
        try:
            while data := await reader.read(_CHUNK):
                if leg is link.to_target:
                    self._count(link, len(data))
                if leg.dead:
                    continue
                now = loop.time()
                start = max(now, leg.free_at)
                if plan.rate_bytes_s:
                    leg.free_at = start + len(data) / plan.rate_bytes_s
                delay = plan.delay_s + self._jitter.uniform(0.0, plan.jitter_s)
                leg.last_at = max(leg.last_at, start + delay)
                leg.queue.append((leg.last_at, data))
                leg.ready.set()
        except OSError:
            pass
        link.end(eof)

    async def _send(self, link: _Link, leg: _Leg) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await leg.ready.wait()
                leg.ready.clear()
                while leg.queue:
                    at, data = leg.queue[0]
                    if at > loop.time():
                        await asyncio.sleep(at - loop.time())
                    await link.flowing.wait()
                    leg.queue.popleft()
                    if not leg.dead:
                        leg.writer.write(data)
                        await leg.writer.drain()
        except OSError:
            link.end(End.TARGET if leg is link.to_target else End.INITIATOR)

    # ------------------------------------------------------------ the fault

    def _count(self, link: _Link, n: int) -> None:
        self.bytes_to_target += n
        before = link.bytes_up
        link.bytes_up += n
        at = link.strike_at
        if at is not None and before <= at < link.bytes_up:
            self.hits.append(link.number)
            self._strike(link)

    def _strike(self, link: _Link) -> None:
        fault = self.plan.fault
        if fault is Fault.STALL:
            link.flowing.clear()
            asyncio.get_running_loop().call_later(self.plan.stall_s, _stall_over, link)
        elif fault is Fault.RESET:
            link.end(End.RESET)
        elif fault is Fault.DEAD_TO_TARGET:
            link.to_target.dead = True
        elif fault is Fault.DEAD_TO_INITIATOR:
            link.to_initiator.dead = True


def _stall_over(link: _Link) -> None:
    if not link.ended.done():
        link.stall_ran_out = True
        link.flowing.set()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST rather than a FIN: SO_LINGER on, with a zero timeout."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
