"""The fault proxy itself (tests/fault_proxy.py), before anything is tested through it: what
it does not fault arrives intact and in order, a stall holds the bytes and then delivers
them, a reset reaches the client as a reset."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.fault_proxy import End, Fault, FaultProxy, Plan

pytestmark = pytest.mark.tcp

BOUND_S = 30.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()


@asynccontextmanager
async def _through(
    plan: Plan,
) -> AsyncIterator[tuple[FaultProxy, asyncio.StreamReader, asyncio.StreamWriter]]:
    """A client connected to an echo server through a proxy with ``plan``."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, FaultProxy("127.0.0.1", port, plan) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            yield proxy, reader, writer
        finally:
            writer.close()


def test_delay_jitter_and_a_cap_keep_every_byte_in_order() -> None:
    payload = random.Random(1).randbytes(1 << 20)
    plan = Plan(seed=1, delay_s=0.001, jitter_s=0.003, rate_bytes_s=32 << 20)

    async def main() -> bytes:
        async with asyncio.timeout(BOUND_S), _through(plan) as (_, reader, writer):
            for at in range(0, len(payload), 10_000):
                writer.write(payload[at : at + 10_000])
            got, _ = await asyncio.gather(reader.readexactly(len(payload)), writer.drain())
            return got

    assert asyncio.run(main()) == payload


def test_a_stall_holds_both_ways_then_delivers_what_it_held() -> None:
    plan = Plan(seed=2, fault=Fault.STALL, fault_after=(0, 1), stall_s=0.2)

    async def main() -> tuple[bytes, FaultProxy]:
        async with asyncio.timeout(BOUND_S), _through(plan) as (proxy, reader, writer):
            writer.write(b"held ")
            writer.write(b"then sent")
            return await reader.readexactly(14), proxy

    got, proxy = asyncio.run(main())
    assert got == b"held then sent"
    assert proxy.hits == [0] and proxy.links[0].stall_ran_out, proxy


def test_a_reset_reaches_the_client_as_a_reset() -> None:
    plan = Plan(seed=3, fault=Fault.RESET, fault_after=(0, 1))

    async def main() -> FaultProxy:
        async with asyncio.timeout(BOUND_S), _through(plan) as (proxy, reader, writer):
            writer.write(b"x")
            with pytest.raises(ConnectionResetError):
                await reader.read(1)
            return proxy

    proxy = asyncio.run(main())
    assert proxy.hits == [0] and proxy.links[0].ended.result() is End.RESET, proxy
