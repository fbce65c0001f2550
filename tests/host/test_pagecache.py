"""The page cache over a model device: file semantics, and each policy's fate.

The model device spends memory exactly as the iSCSI initiator does (command PDU,
R2T and response buffers, Data-Out headers, each when the real path needs it),
so these are the demo's scenarios in miniature, on the real cache code.
"""

from __future__ import annotations

import asyncio
import zlib

import pytest

from earmark.host.modeldevice import ModelDevice
from earmark.host.pagecache import PageCache
from earmark.host.policy import HostTuning, Policy
from earmark.memory import Arena, check_level_order
from earmark.memory.levels import PAGE_BYTES
from earmark.sim.virtualtime import run_virtual
from earmark.sim.workload import RunResult, Workload, run_writers

ARENA = 512 * 1024
DEVICE = 8 << 20


def arena_for(policy: Policy) -> Arena:
    emergency = ARENA // 25 // 64 * 64 if policy is Policy.MEMPOOL else 0
    return Arena(ARENA, emergency=emergency)


def scenario(policy: Policy, writers: int, *, validate: bool = False) -> tuple[RunResult, bool]:
    async def main() -> tuple[RunResult, bool]:
        arena = arena_for(policy)
        if validate:
            arena.validator = check_level_order
        device = ModelDevice(arena, DEVICE, latency=0.001)
        work = Workload(writers, max(4, 512 // writers), DEVICE // PAGE_BYTES // 4, stall_s=5)
        result = await run_writers(arena, device, policy, work)
        verified = all(
            zlib.crc32(device.snapshot(i * PAGE_BYTES, PAGE_BYTES)) == crc
            for i, crc in result.expected.items()
        )
        assert arena.high_water <= arena.capacity
        return result, verified

    # On virtual time: which writers reach direct reclaim together, and so a fate, is
    # then the code's, not the machine's (under load, real time let 70 of 256 mempool
    # writers into reclaim at once, and they drained the pool).
    return run_virtual(main)


@pytest.mark.parametrize("writers", [1, 16, 256])
def test_none_deadlocks_and_names_the_cycle(writers: int) -> None:
    result, _ = scenario(Policy.NONE, writers)
    assert result.outcome == "deadlocked"
    assert result.cycle is not None
    assert "cache holds" in result.cycle and "freed only by" in result.cycle
    assert "watchdog" not in result.cycle, "the cycle must be named, not timed out"


@pytest.mark.parametrize(("policy", "writers", "outcome"), [
    (Policy.MEMPOOL, 1, "completed"),
    (Policy.MEMPOOL, 256, "completed"),  # its reclaimers throttled (allow_direct_reclaim)
    (Policy.THROTTLE, 1, "completed"),
    (Policy.THROTTLE, 256, "deadlocked"),
])
def test_mempool_survives_many_writers_and_throttle_only_one(
    policy: Policy, writers: int, outcome: str
) -> None:
    result, verified = scenario(policy, writers)
    assert result.outcome == outcome, result.cycle
    if outcome == "completed":
        assert verified
    else:
        assert result.cycle is not None and "watchdog" not in result.cycle


@pytest.mark.parametrize("writers", [1, 16, 256])
def test_reserve_completes_and_verifies_under_the_validator(writers: int) -> None:
    result, verified = scenario(Policy.RESERVE, writers, validate=True)
    assert result.outcome == "completed", result.cycle
    assert verified and result.expected
    assert result.peak_arena_bytes <= result.arena_bytes


def test_file_semantics_partial_pages_and_fsync() -> None:
    async def main() -> None:
        arena = Arena(256 * 1024)
        device = ModelDevice(arena, 1 << 20)
        cache = PageCache(arena, device, Policy.RESERVE, HostTuning(dirty_expire_s=3600))
        cache.start()
        assert await cache.pread(100, 50, owner="r") == bytes(50)
        await cache.pwrite(4090, b"across a page boundary", owner="w")
        assert await cache.pread(4090, 22, owner="r") == b"across a page boundary"
        assert device.snapshot(4090, 22) == bytes(22), "write-back, not write-through"
        await cache.fsync(owner="w")
        assert device.snapshot(4090, 22) == b"across a page boundary"
        with pytest.raises(ValueError, match="outside the 1048576 B device"):
            await cache.pwrite((1 << 20) - 2, b"abc", owner="w")
        await cache.close()

    asyncio.run(main())


class FailingDevice(ModelDevice):
    """A model device whose writes fail while `broken` (a session gone for good, EIO)."""

    broken = True

    async def write_pages(self, offset: int, pages: list[memoryview], *, owner: str) -> None:
        if self.broken:
            raise OSError(5, "Input/output error")
        await super().write_pages(offset, pages, owner=owner)


@pytest.mark.parametrize("policy", [Policy.RESERVE, Policy.NONE])
def test_a_failed_writeback_of_mapped_pages_fails_their_msync_once(policy: Policy) -> None:
    async def main() -> None:
        arena = arena_for(policy)
        device = FailingDevice(arena, 1 << 20)
        cache = PageCache(arena, device, policy, HostTuning(dirty_expire_s=3600))
        cache.start()
        mapped = await cache.map(0, 2 * PAGE_BYTES, owner="m")
        mapped.views[0][:] = b"lost" * 1024
        with pytest.raises(OSError, match="Input/output error"):
            await mapped.msync()
        await cache.fsync(owner="m")  # said once, by the msync
        device.broken = False
        mapped.views[1][:] = b"kept" * 1024
        await mapped.msync()
        assert device.snapshot(PAGE_BYTES, PAGE_BYTES) == b"kept" * 1024
        await mapped.unmap()
        await cache.close()

    asyncio.run(main())


@pytest.mark.parametrize("policy", [Policy.RESERVE, Policy.THROTTLE])
def test_a_failed_writeback_fails_the_next_fsync_once_and_frees_its_pages(policy: Policy) -> None:
    async def main() -> None:
        arena = arena_for(policy)
        arena.validator = check_level_order if policy is Policy.RESERVE else None
        device = FailingDevice(arena, 1 << 20)
        cache = PageCache(arena, device, policy, HostTuning(dirty_expire_s=3600))
        cache.start()
        await cache.pwrite(0, b"lost" * 1024, owner="w")
        with pytest.raises(OSError, match="Input/output error"):
            await cache.fsync(owner="w")
        # Clean now (their data lost, as Linux does it): they can be written again.
        assert cache.stats()["dirty"] == cache.stats()["writeback_inflight"] == 0
        await cache.fsync(owner="w")  # said once
        device.broken = False
        await cache.pwrite(0, b"kept" * 1024, owner="w")
        await cache.fsync(owner="w")
        assert device.snapshot(0, 4096) == b"kept" * 1024
        await cache.close()
        assert arena.high_water <= arena.capacity

    asyncio.run(main())


@pytest.mark.parametrize("policy", list(Policy))
def test_fsync_waits_for_a_writeback_taken_before_its_task_first_ran(policy: Policy) -> None:
    # The flusher takes a request (its pages leave the dirty set) and creates the task
    # that writes it; the task counts itself in flight only once it first runs. A fsync
    # that looks in between sees nothing dirty and nothing in flight: it must still wait
    # for those pages (under a schedule that runs ready callbacks out of order, as the
    # simulator's do, it can look there).
    async def main() -> bytes:
        arena = arena_for(policy)
        device = ModelDevice(arena, DEVICE, latency=0.001)
        cache = PageCache(arena, device, policy)  # no flusher: this test is it
        await cache.pwrite(0, b"x" * PAGE_BYTES, owner="writer")
        run, res = cache._take_run()
        task = asyncio.get_running_loop().create_task(
            cache._write_run(run, res, owner="writeback-1"))
        await cache.fsync(owner="fsync")
        on_disk = device.snapshot(0, PAGE_BYTES)
        await task
        return on_disk

    assert run_virtual(main) == b"x" * PAGE_BYTES
