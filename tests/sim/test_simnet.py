"""The simulated network: ordered, timed byte streams; pause, end of stream, reset; and the
real initiator and target stacks running over it on virtual time, the same every run."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from typing import Any

import pytest

from earmark.host.policy import Policy
from earmark.runtime.initiator_device import BlockDevice
from earmark.sim.demo import DemoConfig, run_matrix
from earmark.sim.schedule import ReadyQueue
from earmark.sim.simnet import SimTransport
from earmark.sim.stacks import SimStack
from earmark.sim.virtualtime import run_virtual


class Listener:
    """A protocol factory that keeps every server-side protocol it made."""

    def __init__(self) -> None:
        self.accepted: list[Recorder] = []

    def __call__(self) -> Recorder:
        self.accepted.append(Recorder())
        return self.accepted[-1]


class Recorder(asyncio.BufferedProtocol):
    """Keeps what arrives and when; reads in small pieces to exercise partial delivery."""

    def __init__(self) -> None:
        self.buf = bytearray(7)
        self.got = bytearray()
        self.times: list[float] = []
        self.transport: asyncio.Transport | None = None
        self.lost: list[Exception | None] = []
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        self.got += self.buf[:nbytes]
        self.times.append(asyncio.get_running_loop().time())

    def eof_received(self) -> bool | None:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


def test_bytes_arrive_in_order_after_latency_and_transmission_time() -> None:
    async def main() -> tuple[Recorder, Recorder, float]:
        loop = asyncio.get_running_loop()
        accept = Listener()
        servers = accept.accepted
        listener = await loop.create_server(accept, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(Recorder, "127.0.0.1", port)
        start = loop.time()
        payload = os.urandom(1000)
        transport.writelines([payload[:400], memoryview(payload)[400:]])
        transport.write(b"tail")
        await asyncio.sleep(0.01)
        server = servers[0]
        assert bytes(server.got) == payload + b"tail"
        # 1000 B at 1 MB/s take 1 ms to leave, then 2 ms on the wire.
        first = server.times[0] - start
        assert first == pytest.approx(0.003, abs=1e-9)
        # The reader pauses: what comes meanwhile waits, in order, until it resumes.
        assert server.transport is not None
        server.transport.pause_reading()
        transport.write(b"held")
        await asyncio.sleep(0.01)
        assert bytes(server.got).endswith(b"tail")
        server.transport.resume_reading()
        await asyncio.sleep(0)
        assert bytes(server.got).endswith(b"held")
        # Closing: the peer sees the end of the stream after the last byte.
        transport.write(b"bye")
        transport.close()
        await asyncio.sleep(0.01)
        assert isinstance(client, Recorder)
        return server, client, start

    server, client, _ = run_virtual(main, latency=0.002, bandwidth=1e6)
    assert bytes(server.got).endswith(b"heldbye") and server.eof and server.lost == [None]
    assert client.lost == [None]


class Spinning(RuntimeError):
    pass


class Budget(ReadyQueue):
    """A ready queue that runs at most `most` callbacks: a loop that polls where it
    should go idle fails here instead of spinning for good."""

    def __init__(self, most: int) -> None:
        super().__init__()
        self.left = most
        self.popleft = self._counted  # type: ignore[method-assign]

    def _counted(self) -> Any:
        self.left -= 1
        if self.left < 0:
            raise Spinning("the loop never went idle")
        return deque.popleft(self)


def test_the_end_of_the_stream_waits_idle_behind_what_a_paused_reader_has_not_taken() -> None:
    """It was polled for, a callback a step: the loop never idled, so its clock never
    moved and a stalled reader was never seen as a stall."""

    async def main() -> Recorder:
        loop = asyncio.get_running_loop()
        accept = Listener()
        listener = await loop.create_server(accept, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(Recorder, "127.0.0.1", port)
        await asyncio.sleep(0.01)
        server = accept.accepted[0]
        assert server.transport is not None
        server.transport.pause_reading()
        transport.write(b"behind")
        transport.close()
        await asyncio.sleep(1.0)
        assert not server.eof and not server.got
        server.transport.resume_reading()
        await asyncio.sleep(0.01)
        return server

    server = run_virtual(main, ready=Budget(10_000), latency=0.002)
    assert bytes(server.got) == b"behind" and server.eof and server.lost == [None]


def test_reset_and_refused() -> None:
    async def main() -> tuple[Recorder, Recorder]:
        loop = asyncio.get_running_loop()
        accept = Listener()
        servers = accept.accepted
        # A fixed port is safe here: nothing leaves the simulated network.
        listener = await loop.create_server(accept, "127.0.0.1", 3260)
        transport, client = await loop.create_connection(Recorder, "127.0.0.1", 3260)
        transport.write(b"lost in flight")
        transport.abort()
        await asyncio.sleep(0.01)
        listener.close()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(Recorder, "127.0.0.1", 3260)
        assert isinstance(client, Recorder)
        return servers[0], client

    server, client = run_virtual(main)
    assert server.got == b"" and isinstance(server.lost[0], ConnectionResetError)
    assert client.lost == [None]


def test_the_real_stacks_over_it_read_back_what_they_wrote() -> None:
    data = os.urandom(3 << 20)  # R2T and Data-Out, large Data-In placed

    async def main() -> bytes:
        async with SimStack(8 << 20) as stack, BlockDevice(stack.url) as dev:
            await dev.write(1 << 20, data)
            await dev.flush()
            return await dev.read(1 << 20, len(data))

    assert run_virtual(main) == data


def test_the_demo_on_the_simulator_is_the_same_every_run_and_shows_the_fates() -> None:
    config = DemoConfig(writers=[1, 64], policies=[Policy.NONE, Policy.RESERVE],
                        total_pages=1024, seed=3)

    def once() -> list[dict[str, object]]:
        async def main() -> list[dict[str, object]]:
            async with SimStack(config.lun_bytes) as stack:
                return [row.as_json() for row in await run_matrix(stack, config)]

        return run_virtual(main)

    first = once()
    assert first == once()
    fates = {(r["policy"], r["writers"]): r["outcome"] for r in first}
    assert fates == {("none", 1): "deadlocked", ("none", 64): "deadlocked",
                     ("reserve", 1): "completed", ("reserve", 64): "completed"}
    for row in first:
        if row["outcome"] == "deadlocked":
            assert "host arena 100% full" in str(row["cycle"])
        else:
            assert row["verified"] is True
        peak, capacity = row["peak_arena_bytes"], row["arena_bytes"]
        assert isinstance(peak, int) and isinstance(capacity, int) and peak <= capacity


@pytest.mark.parametrize("window", [0, 4096])
def test_only_a_bounded_window_sends_window_updates(
    monkeypatch: pytest.MonkeyPatch, window: int,
) -> None:
    """An unbounded window never closes, so a reader's progress has nothing to reopen:
    no update travels back (each was a timer and a loop step, for nothing)."""
    updates: list[int] = []
    opened = SimTransport._window

    def counted(self: SimTransport, nbytes: int) -> None:
        updates.append(nbytes)
        opened(self, nbytes)

    monkeypatch.setattr(SimTransport, "_window", counted)

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        accept = Listener()
        listener = await loop.create_server(accept, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(Recorder, "127.0.0.1", port)
        transport.write(bytes(10_000))
        await asyncio.sleep(0.1)
        return bytes(accept.accepted[0].got)

    assert run_virtual(main, latency=0.002, bandwidth=1e6, window=window) == bytes(10_000)
    assert sum(updates) == (10_000 if window else 0)
