"""An in-memory block device that spends memory as an iSCSI initiator does.

Used where the real initiator and target would only add noise: unit tests of
the page cache and the simulator. Every command draws its command PDU, its
Data-Out headers and its receive buffers (R2T, Data-In, response) through
`earmark.memory.draw` at the moment the real path needs each (a receive buffer
when the target's PDU arrives, half a round trip later), holding what it has
meanwhile: exactly the partial holding that drains an emergency pool. The
target answers after `latency` seconds of the loop's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from earmark.memory import Arena, HostLevel
from earmark.memory.allocation import Allocation
from earmark.memory.draw import draw_buffer, draw_charge
from earmark.memory.levels import (
    DATA_OUT_HEADER_BYTES,
    RESPONSE_HEADER_BYTES,
    TASK_DESCRIPTOR_BYTES,
)


class ModelDevice:
    def __init__(
        self,
        arena: Arena,
        size: int,
        *,
        block_size: int = 512,
        latency: float = 0.0,
        max_recv_segment: int = 8192,
        max_burst: int = 262144,
    ) -> None:
        if size % 4096:
            raise ValueError(f"device size {size} B is not a multiple of 4096")
        self.arena = arena
        self._data = bytearray(size)
        self._block_size = block_size
        self.latency = latency
        self.max_recv_segment = max_recv_segment
        self.max_burst = max_burst
        self.writes = 0

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def size(self) -> int:
        return len(self._data)

    def command_cost(self, write: bool, nbytes: int) -> Mapping[int, int]:
        pdus = -(-nbytes // self.max_recv_segment)  # Data-Out or Data-In PDUs
        bursts = -(-nbytes // self.max_burst)  # R2Ts, for writes
        cost = self.arena.cost
        wire = cost(RESPONSE_HEADER_BYTES) + (
            bursts * cost(RESPONSE_HEADER_BYTES) if write else pdus * cost(RESPONSE_HEADER_BYTES)
        )
        task = TASK_DESCRIPTOR_BYTES + (pdus * DATA_OUT_HEADER_BYTES if write else 0)
        return {HostLevel.TASK: task, HostLevel.WIRE: wire}

    async def write_pages(self, offset: int, pages: list[memoryview], *, owner: str) -> None:
        nbytes = sum(len(p) for p in pages)
        pdus = -(-nbytes // self.max_recv_segment)
        bursts = -(-nbytes // self.max_burst)
        held: list[Allocation] = []
        try:
            # Submit: the command PDU; then, one network trip later, each R2T lands in a
            # receive buffer and its Data-Out PDUs go out; the response comes last.
            held.append(await self._charge(HostLevel.TASK, TASK_DESCRIPTOR_BYTES, owner))
            await self._wait_for_target(owner, "write command (R2T)", self.latency / 2)
            for _ in range(bursts):
                held.append(await self._buffer(HostLevel.WIRE, RESPONSE_HEADER_BYTES, owner))
            for _ in range(pdus):
                held.append(await self._charge(HostLevel.TASK, DATA_OUT_HEADER_BYTES, owner))
            await self._wait_for_target(owner, "write data (response)", self.latency / 2)
            held.append(await self._buffer(HostLevel.WIRE, RESPONSE_HEADER_BYTES, owner))
            pos = offset
            for page in pages:
                self._data[pos : pos + len(page)] = page
                pos += len(page)
            self.writes += 1
        finally:
            for alloc in held:
                alloc.free()

    async def read_page(self, offset: int, page: memoryview, *, owner: str) -> None:
        held: list[Allocation] = []
        try:
            held.append(await self._charge(HostLevel.TASK, TASK_DESCRIPTOR_BYTES, owner))
            await self._wait_for_target(owner, "read command", self.latency)
            for _ in range(-(-len(page) // self.max_recv_segment) + 1):  # Data-In + response
                held.append(await self._buffer(HostLevel.WIRE, RESPONSE_HEADER_BYTES, owner))
            page[:] = self._data[offset : offset + len(page)]
        finally:
            for alloc in held:
                alloc.free()

    async def flush(self, *, owner: str) -> None:
        held: list[Allocation] = []
        try:
            held.append(await self._charge(HostLevel.TASK, TASK_DESCRIPTOR_BYTES, owner))
            await self._wait_for_target(owner, "SYNCHRONIZE CACHE", self.latency)
            held.append(await self._buffer(HostLevel.WIRE, RESPONSE_HEADER_BYTES, owner))
        finally:
            for alloc in held:
                alloc.free()

    async def _charge(self, level: int, nbytes: int, owner: str) -> Allocation:
        return await draw_charge(self.arena, level, nbytes, owner=owner)

    async def _buffer(self, level: int, nbytes: int, owner: str) -> Allocation:
        return await draw_buffer(self.arena, level, nbytes, owner=owner)

    async def _wait_for_target(self, owner: str, what: str, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        with self.arena.waits.waiting(owner, f"the target's answer to a {what}", now=loop.time()):
            await asyncio.sleep(seconds)

    def snapshot(self, offset: int, length: int) -> bytes:
        """What the device holds, bypassing every cache (for verification)."""
        return bytes(self._data[offset : offset + length])
