"""The demo's stacks: the page cache over earmark's initiator, to an embedded earmark
target, over TCP (:class:`TcpStack`, the target on its own thread) or over the
simulated network of a virtual-time loop (:class:`SimStack`, the same code); or to a
target in another process (:class:`RemoteStack`).

Each run opens a fresh session on that run's host arena, so the host side of the
cycle (pages, requests, commands, receive buffers) is all in one bounded arena.
The target has its own, generous one: the demo is about the host. Verification
reads every page written back through a new session with no cache.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Unpack

from earmark.host.policy import Policy
from earmark.memory import Arena
from earmark.memory.levels import PAGE_BYTES
from earmark.runtime.embedded import EmbeddedTarget, one_lun_server
from earmark.runtime.initiator_device import BlockDevice
from earmark.sim.volatile import VolatileCache
from earmark.target.backing import Backing, MemoryBacking
from earmark.target.build import OneLun

#: How long opening a session may take before the arena is blamed.
_CONNECT_S = 30.0
#: The verifying session's arena: only its receive buffer and a few commands.
_VERIFY_ARENA = 4 << 20
#: The most pages the verifier reads in one command: a run's pages are read back a span
#: at a time, not one round trip a page (16,384 of them after a long run).
_VERIFY_SPAN_PAGES = 256


class SlowBacking:
    """A backing store behind `delay` seconds of target-side latency per write (--slow-net).

    The sleep runs on the target's I/O threads, like a slow disk or a congested
    path: the target answers late, the host's writeback memory stays held longer.
    With no delay it only sends every write to the I/O threads: on the simulator,
    that is the virtual-time loop's executor, whose disk model then delays it.
    """

    def __init__(self, inner: Backing, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    @property
    def size(self) -> int:
        return self.inner.size

    def readinto(self, offset: int, buffers: list[memoryview]) -> None:
        self.inner.readinto(offset, buffers)

    def read_cached(self, offset: int, buffers: list[memoryview]) -> bool:
        return self.inner.read_cached(offset, buffers)

    def write(self, offset: int, buffers: list[memoryview]) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.inner.write(offset, buffers)

    def write_now(self, offset: int, buffers: list[memoryview]) -> bool:
        return False  # it is the slow disk: every write waits, on a thread

    def sync(self) -> None:
        self.inner.sync()

    def punch(self, offset: int, length: int) -> None:
        self.inner.punch(offset, length)

    def extent(self, offset: int) -> tuple[bool, int]:
        return self.inner.extent(offset)

    def close(self) -> None:
        self.inner.close()


class _IscsiStack:
    """Sessions to one target at ``url``: one per run, and one more to verify."""

    url = ""

    def open(self, arena: Arena, policy: Policy, *,
             attempts: int = 1) -> AbstractAsyncContextManager[BlockDevice]:
        """A session on `arena`; `attempts`: logins it may try again after losing it."""
        @asynccontextmanager
        async def opened() -> AsyncIterator[BlockDevice]:
            device = BlockDevice(self.url, arena=arena, policy=policy,
                                 reconnect_timeout=5, max_attempts=attempts)
            try:
                async with asyncio.timeout(_CONNECT_S):
                    await device.connect()
            except TimeoutError:
                raise RuntimeError(
                    f"no session within {_CONNECT_S:g} s: a host arena of {arena.capacity} B "
                    "cannot hold the initiator's receive buffer and its login; give it more"
                ) from None
            try:
                yield device
            finally:
                await device.close()

        return opened()

    async def verify(self, expected: dict[int, int]) -> bool:
        indices = sorted(expected)
        async with BlockDevice(self.url, arena=Arena(_VERIFY_ARENA)) as device:
            at = 0
            while at < len(indices):
                first = indices[at]
                last = bisect_left(indices, first + _VERIFY_SPAN_PAGES, at) - 1
                data = memoryview(await device.read(
                    first * PAGE_BYTES, (indices[last] - first + 1) * PAGE_BYTES))
                for index in indices[at:last + 1]:
                    start = (index - first) * PAGE_BYTES
                    if zlib.crc32(data[start:start + PAGE_BYTES]) != expected[index]:
                        return False
                at = last + 1
        return True


class RemoteStack(_IscsiStack):
    """Sessions to a target another process serves at `url` (`earmark serve`): nothing
    of it shares this process, its interpreter lock or its loop, as on another machine."""

    def __init__(self, url: str) -> None:
        self.url = url


class TcpStack(_IscsiStack):
    def __init__(self, lun_bytes: int, *, slow_net: float = 0.0) -> None:
        backing: Backing = MemoryBacking(lun_bytes)
        if slow_net:
            backing = SlowBacking(backing, slow_net)
        self.target = EmbeddedTarget(backing)

    def __enter__(self) -> TcpStack:
        self.target.start()
        self.url = self.target.url
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.target.stop()


class SimStack(_IscsiStack):
    """The target on the same virtual-time loop as the host, over its simulated network:
    every byte goes through the real initiator, codec, target session and admission."""

    def __init__(self, lun_bytes: int, *, wrap: Callable[[Backing], Backing] | None = None,
                 **options: Unpack[OneLun]) -> None:
        """``wrap``: the disk the target sees, around the memory that holds the data."""
        self.backing = MemoryBacking(lun_bytes)
        self._disk = self.backing if wrap is None else wrap(self.backing)
        self._options = options
        self.server = one_lun_server(self._disk, **options)

    async def crash(self, power: VolatileCache | None = None) -> None:
        """The target process dies and starts again on the same port: its sessions, commands
        in flight and memory are gone, nothing it had yet to send leaves; the disk keeps
        what it was given (write-through) or, with `power`, what a power cut leaves."""
        port = self.server.port
        for conn in self.server.connections.values():
            if conn.transport is not None:
                conn.transport.abort()
        if power is not None:
            power.cut()
        await self.server.stop(grace=0)
        if power is not None:
            power.restore()
        self.server = one_lun_server(self._disk, **self._options)
        self.server.port = port
        await self.server.start()

    async def __aenter__(self) -> SimStack:
        await self.server.start()
        iqn = next(iter(self.server.portal.targets))
        self.url = f"iscsi://127.0.0.1:{self.server.port}/{iqn}/0"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.server.stop(grace=2)
