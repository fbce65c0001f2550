"""The simulated network's model, sans-I/O: when bytes arrive, what a reader is handed,
which addresses answer. No loop and no clock: callers pass the time in.

A link has a one-way latency and a bandwidth: bytes written leave when the link is
free, in order, and arrive `latency` later. A receiver that pauses reading leaves
later bytes queued until it resumes, as a full socket buffer would; there is no
window, so a sender is never blocked. A reset drops whatever is queued. A
connection to an address nobody listens on is refused.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

Address = tuple[str, int]

#: What a listening address leads to (for the asyncio glue: the protocol factory).
L = TypeVar("L")

#: Where ports handed out for port 0 and for the connecting side start (the
#: dynamic range), as a kernel's would.
FIRST_PORT = 49152


class Link:
    """One direction of a simulated connection."""

    __slots__ = ("_free", "bandwidth", "latency")

    def __init__(self, latency: float, bandwidth: float) -> None:
        if latency < 0 or bandwidth <= 0:
            raise ValueError("a simulated link needs latency >= 0 and bandwidth > 0")
        self.latency = latency
        self.bandwidth = bandwidth
        self._free = 0.0  # when everything queued on the link has left

    def send(self, now: float, nbytes: int) -> float:
        """Queue `nbytes` written at `now`; when they arrive at the other end."""
        leaves = max(now, self._free) + nbytes / self.bandwidth
        self._free = leaves
        return leaves + self.latency

    def end(self, now: float) -> float:
        """The stream is closed at `now`: when the other end sees it end, after what
        was written before."""
        return max(now, self._free) + self.latency

    def handshake(self) -> float:
        """How long a connection takes to open (SYN, SYN-ACK)."""
        return 2 * self.latency


class Inbox:
    """Bytes arrived at one end and not yet handed to its reader.

    `paused` is the reader's own switch; `draining` says a hand-over is already due
    (so arrivals meanwhile just queue behind it, in order).
    """

    __slots__ = ("_chunks", "draining", "paused")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self.paused = False
        self.draining = False

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
            yield self._chunks.popleft()

    def unread(self, rest: bytes) -> None:
        self._chunks.appendleft(rest)

    def reset(self) -> None:
        self._chunks.clear()


class Listeners(Generic[L]):
    """Who listens where, and the ports handed out."""

    __slots__ = ("_by_address", "_ports")

    def __init__(self) -> None:
        self._by_address: dict[Address, L] = {}
        self._ports = itertools.count(FIRST_PORT)

    def port(self) -> int:
        return next(self._ports)

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
