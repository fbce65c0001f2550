"""The simulated network's model, without a loop: callers pass the time in.

A link (one direction of a connection) is TCP as far as the code above it can
tell: bytes written leave in order when the wire is free (bandwidth), and arrive a
latency later, plus a seeded jitter and, as a fault, a seeded delay spike, never
overtaking earlier bytes. At most a receive window of bytes is on the wire or
unread at the receiver; the window reopens one latency after the receiver reads.
Written bytes the window does not let out wait at the sender: up to `sndbuf` in
the "kernel", the rest in the transport's own buffer, which is what pauses the
writing protocol (`pause_writing`) above its high-water mark and resumes it at
the low one, as asyncio's socket transports do. A reader that pauses leaves
arrivals queued (:class:`Inbox`), so the window fills and the sender is pushed
back. Partitions stop every byte from leaving until they heal. A connection to an
address nobody listens on is refused.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from earmark.sim.faults import NO_FAULTS, LinkFaults

Address = tuple[str, int]

#: What a listening address leads to (for the asyncio glue: the protocol factory).
L = TypeVar("L")

#: Where ports handed out for port 0 and for the connecting side start (the
#: dynamic range), as a kernel's would.
FIRST_PORT = 49152

#: asyncio's default write-buffer marks (a transport's protocol may set its own).
DEFAULT_HIGH = 64 * 1024

#: The end of the stream (FIN) as it travels: behind every byte written before it.
END = b""


@dataclass(frozen=True, slots=True)
class LinkShape:
    """Every simulated connection's links: latency one way (s), bandwidth (B/s), jitter
    (at most that much extra one-way delay, s), receive window and send buffer (bytes,
    0: unbounded), the faults, and the seed their draws come from."""

    latency: float = 50e-6
    bandwidth: float = 1.25e9
    jitter: float = 0.0
    window: int = 0
    sndbuf: int = 0
    faults: LinkFaults = NO_FAULTS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latency < 0 or self.bandwidth <= 0 or self.jitter < 0:
            raise ValueError("a simulated link needs latency >= 0, jitter >= 0 and "
                             "bandwidth > 0")
        if self.window < 0 or self.sndbuf < 0:
            raise ValueError("a simulated link's window and send buffer are >= 0 bytes")

    def handshake(self) -> float:
        """How long a connection takes to open (SYN, SYN-ACK)."""
        return 2 * self.latency


class Trace:
    """What every link delivered, in order: a hash of it (same seed, same hash) and, when
    asked, the readable lines."""

    __slots__ = ("_hash", "events", "lines")

    def __init__(self, *, readable: bool = False) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self.events = 0
        self.lines: list[str] | None = [] if readable else None

    def delivered(self, now: float, link: int, data: bytes) -> None:
        self.events += 1
        # When, where and how much, not what: the login's ISID is random by design.
        self._hash.update(b"%d %d %d " % (round(now * 1e9), link, len(data)))
        if self.lines is not None:
            what = f"{len(data)} B" if data else "end of stream"
            self.lines.append(f"{now * 1e3:12.6f} ms  link {link:3d}  {what}")

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class Link:
    """One direction of a simulated connection: the sender's queue, the wire, the window."""

    __slots__ = ("_armed", "_faults", "_free", "_held", "_held_bytes", "_last", "_partitioned",
                 "_rng", "_spiky", "_wire", "high", "in_flight", "low", "number", "paused",
                 "shape")

    def __init__(self, shape: LinkShape, number: int = 0) -> None:
        self.shape = shape
        self.number = number
        self._faults = shape.faults
        #: Whether the faults can hold or delay a segment at all: without partitions a
        #: segment leaves when the wire is free, without spikes its delay is the latency,
        #: and asking them was two calls per segment of every run without faults.
        self._partitioned = bool(shape.faults.partitions)
        self._spiky = bool(shape.faults.spike_p)
        self._rng = random.Random(shape.seed * 1_000_003 + number)
        self._free = 0.0  # when the wire has sent everything it took
        self._last = 0.0  # the latest arrival so far: nothing overtakes it
        self._held: deque[bytes] = deque()  # written, not yet let out by the window
        self._held_bytes = 0
        self._wire: deque[tuple[float, bytes]] = deque()  # (arrival, bytes), in order
        self._armed = False
        self.in_flight = 0  # on the wire or unread at the receiver (a bounded window's)
        self.high = DEFAULT_HIGH
        self.low = DEFAULT_HIGH // 4
        self.paused = False

    # ------------------------------------------------------------ the sender

    def buffered(self) -> int:
        """What the transport itself holds (beyond the send buffer): its write buffer."""
        return max(0, self._held_bytes - self.shape.sndbuf)

    def limits(self, high: int | None, low: int | None) -> None:
        self.high = DEFAULT_HIGH if high is None else high
        self.low = self.high // 4 if low is None else low

    def write(self, now: float, data: bytes) -> bool:
        """Queue `data` (END: the stream closes after it); True when the writer must
        pause now (its transport's buffer passed the high-water mark)."""
        self._held.append(data)
        self._held_bytes += len(data)
        self._transmit(now)
        # What the transport holds is at most what is held: that first, without a call
        # (nearly every write leaves at once, nothing held).
        if not self.paused and self._held_bytes > self.high and self.buffered() > self.high:
            self.paused = True
            return True
        return False

    def opened(self, now: float, nbytes: int) -> bool:
        """The receiver read `nbytes` (the window update arrives now); True when the
        paused writer must resume."""
        self.in_flight -= nbytes
        if self._held:  # else nothing waits to leave: no call to find that out
            self._transmit(now)
        if self.paused and self.buffered() <= self.low:
            self.paused = False
            return True
        return False

    def _transmit(self, now: float) -> None:
        shape = self.shape
        held = self._held
        window = shape.window
        while held:
            data = held[0]
            room = window - self.in_flight if window else len(data)
            if data and (room <= 0 or (self.in_flight and room < min(len(data), window // 2))):
                return  # no silly windows: wait until half the window is open (RFC 1122)
            if len(data) > room:  # a segment up to the window's edge
                held[0] = data[room:]
                data = data[:room]
            else:
                held.popleft()
            self._held_bytes -= len(data)
            if window:  # an unbounded window counts nothing: it never closes
                self.in_flight += len(data)
            leaves = max(now, self._free, self._faults.heals(now)) if self._partitioned \
                else max(now, self._free)
            leaves += len(data) / shape.bandwidth
            self._free = leaves
            delay = shape.latency + self._faults.spike(self._rng) if self._spiky \
                else shape.latency
            if shape.jitter:
                delay += self._rng.random() * shape.jitter
            arrives = max(leaves + delay, self._last)
            self._last = arrives
            self._wire.append((arrives, data))

    # ------------------------------------------------------------ the receiver

    def wake(self) -> float | None:
        """When the receiving end must next take arrivals (None: a wake-up is already set,
        or nothing is on the wire)."""
        if self._armed or not self._wire:
            return None
        self._armed = True
        return self._wire[0][0]

    def arrived(self, now: float) -> Iterator[bytes]:
        """What has arrived by `now`, in order (END last, if the stream ended)."""
        self._armed = False
        wire = self._wire
        while wire and wire[0][0] <= now:
            yield wire.popleft()[1]

    def reset(self) -> None:
        """The connection is gone: nothing more leaves or arrives."""
        self._held.clear()
        self._held_bytes = 0
        self._wire.clear()


class Inbox:
    """Bytes arrived at one end and not yet handed to its reader.

    `paused` is the reader's own switch; `draining` says a hand-over is already due
    (so arrivals meanwhile just queue behind it, in order); `taken` counts the bytes
    the reader took, which is what reopens the sender's window.
    """

    __slots__ = ("_chunks", "draining", "paused", "taken")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self.paused = False
        self.draining = False
        self.taken = 0

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def arrive(self, data: bytes) -> bool:
        """Queue `data`; True when it should be handed over now."""
        self._chunks.append(data)
        return not self.paused and not self.draining

    def resume(self) -> bool:
        """The reader reads again; True when a hand-over must be scheduled for what
        waited (it is then due: `draining`)."""
        if not self.paused:
            return False
        self.paused = False
        if self._chunks and not self.draining:
            self.draining = True
            return True
        return False

    def chunks(self) -> Iterator[bytes]:
        """What the reader may take now, oldest first, until it pauses; a chunk it takes
        only part of goes back with `unread`."""
        self.draining = False
        while self._chunks and not self.paused:
            chunk = self._chunks.popleft()
            self.taken += len(chunk)
            yield chunk

    def unread(self, rest: bytes) -> None:
        self.taken -= len(rest)
        self._chunks.appendleft(rest)

    def reset(self) -> None:
        self._chunks.clear()


class Listeners(Generic[L]):
    """Who listens where, and the ports handed out."""

    __slots__ = ("_by_address", "_links", "_ports")

    def __init__(self) -> None:
        self._by_address: dict[Address, L] = {}
        self._ports = itertools.count(FIRST_PORT)
        self._links = itertools.count(1)

    def port(self) -> int:
        return next(self._ports)

    def link_number(self) -> int:
        """A number for each link made, in order: what seeds it and names it in a trace."""
        return next(self._links)

    def listen(self, host: str, port: int, listener: L) -> Address:
        """Where `listener` now listens (port 0: a free port); OSError if taken."""
        address = (host, port or self.port())
        if address in self._by_address:
            raise OSError(98, f"address {host}:{address[1]} already in use on the "
                              "simulated network")
        self._by_address[address] = listener
        return address

    def unlisten(self, address: Address) -> None:
        self._by_address.pop(address, None)

    def connect(self, host: str, port: int) -> L:
        """Who answers a connection to `host:port`; ConnectionRefusedError if nobody."""
        listener = self._by_address.get((host, port))
        if listener is None:
            raise ConnectionRefusedError(111, f"nothing listens on {host}:{port} "
                                              "(simulated network)")
        return listener


class _SimSocket:
    """What ``Server.sockets`` is asked for: the listening address."""

    def __init__(self, address: Address) -> None:
        self._address = address

    def getsockname(self) -> Address:
        return self._address


class SimServer:
    """A listener on the simulated network; what ``create_server`` returns there."""

    def __init__(self, listeners: Listeners[Any], address: Address) -> None:
        self._listeners = listeners
        self.address = address
        self.sockets = [_SimSocket(address)]
        self._serving = True

    def close(self) -> None:
        if self._serving:
            self._serving = False
            self._listeners.unlisten(self.address)

    async def wait_closed(self) -> None:
        return None
