"""`earmark bench`: a small fio for one iSCSI LUN.

Two engines, as fio has ``libaio`` and ``psync``: ``async`` runs ``qd``
long-lived workers on the asyncio device, each keeping one command in flight
(no task per I/O), so the queue depth on the wire is exactly ``qd``; ``sync``
issues one I/O at a time on the blocking device, which is what waiting for
each I/O costs least with. ``auto`` (the default) takes ``sync`` at queue depth
1 and ``async`` above. Latency is measured per I/O around the device call, i.e.
what an application sees, admission included.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from earmark.runtime.initiator_device import BlockDevice
from earmark.runtime.initiator_sync import SyncBlockDevice

__all__ = ["ENGINES", "RW_MODES", "BenchResult", "engine_for", "run_bench", "run_bench_sync"]

RW_MODES = ("randread", "randwrite", "read", "write")
ENGINES = ("auto", "async", "sync")
Progress = Callable[[float, int, float], None]
"""Called once a second as (elapsed, I/Os so far, IOPS over the last second)."""


def engine_for(choice: str, qd: int) -> str:
    """The engine that runs ``qd`` I/Os in flight: ``auto`` is ``sync`` at depth 1."""
    if choice not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, not {choice!r}")
    if choice == "auto":
        return "sync" if qd == 1 else "async"
    if choice == "sync" and qd != 1:
        raise ValueError(f"--engine sync keeps one I/O in flight: --qd {qd} needs --engine async")
    return choice


@dataclass(frozen=True, slots=True)
class BenchResult:
    rw: str
    bs: int
    qd: int
    seconds: float
    ios: int
    iops: float
    mib_per_s: float
    lat_p50_us: float
    lat_p99_us: float
    lat_max_us: float
    reconnects: int
    aborts: int
    """Commands aborted after their timeout and sent again (ABORT TASK)."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.rw} bs={self.bs} qd={self.qd}: {self.iops:,.0f} IOPS, "
            f"{self.mib_per_s:,.1f} MiB/s, latency p50 {self.lat_p50_us:,.0f} us, "
            f"p99 {self.lat_p99_us:,.0f} us, max {self.lat_max_us:,.0f} us "
            f"({self.ios} I/Os in {self.seconds:.1f} s)"
            + (f", {self.aborts} aborted and sent again" if self.aborts else "")
            + (f", {self.reconnects} reconnects" if self.reconnects else "")
        )


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _check_args(rw: str, qd: int, seconds: float) -> None:
    if rw not in RW_MODES:
        raise ValueError(f"--rw must be one of {', '.join(RW_MODES)}, not {rw!r}")
    if qd < 1 or seconds <= 0:
        raise ValueError("--qd must be >= 1 and --time > 0")


def _slots(bs: int, block_size: int, size: int) -> int:
    if bs % block_size or bs > size:
        raise ValueError(f"--bs {bs} must be a multiple of the {block_size} B block "
                         f"size and at most the {size} B device")
    return size // bs


def _offsets(rw: str, slots: int, bs: int) -> Callable[[], int]:
    """Where each I/O goes: uniformly random slots, or one after another (shared by
    all workers, so a sequential run at depth N reads ahead N I/Os)."""
    if rw.startswith("rand"):
        # random() scaled, not randrange(): about 0.2 us less per I/O, and uniform
        # to within slots / 2**53.
        uniform = random.Random().random
        return lambda: int(uniform() * slots) * bs
    cursor = -1

    def sequential() -> int:
        nonlocal cursor
        cursor = (cursor + 1) % slots
        return cursor * bs

    return sequential


def _result(rw: str, bs: int, qd: int, elapsed: float, latencies: list[float],
            reconnects: int, aborts: int) -> BenchResult:
    latencies.sort()
    n = len(latencies)
    return BenchResult(
        rw=rw, bs=bs, qd=qd, seconds=elapsed, ios=n, iops=n / elapsed,
        mib_per_s=n * bs / elapsed / (1 << 20),
        lat_p50_us=_percentile(latencies, 0.50) * 1e6,
        lat_p99_us=_percentile(latencies, 0.99) * 1e6,
        lat_max_us=(latencies[-1] if latencies else 0.0) * 1e6,
        reconnects=reconnects,
        aborts=aborts,
    )


async def run_bench(
    url: str,
    *,
    rw: str = "randread",
    bs: int = 4096,
    qd: int = 32,
    seconds: float = 10.0,
    progress: Progress | None = None,
    environ: Mapping[str, str] | None = None,
) -> BenchResult:
    """The ``async`` engine: ``qd`` workers on one asyncio device."""
    _check_args(rw, qd, seconds)
    async with BlockDevice(url, environ=environ) as dev:
        next_offset = _offsets(rw, _slots(bs, dev.block_size, dev.size), bs)
        payload = memoryview(os.urandom(bs))
        latencies: list[float] = []
        record = latencies.append
        clock = time.perf_counter
        start = clock()
        end = start + seconds

        async def worker() -> None:
            buf = memoryview(bytearray(bs))
            op = dev.write if rw.endswith("write") else dev.readinto
            data = payload if rw.endswith("write") else buf
            while True:
                t0 = clock()
                if t0 >= end:
                    return
                await op(next_offset(), data)
                record(clock() - t0)

        async def report() -> None:
            last_n, last_t = 0, start
            while True:
                await asyncio.sleep(1.0)
                now = clock()
                n = len(latencies)
                if progress is not None:
                    progress(now - start, n, (n - last_n) / (now - last_t))
                last_n, last_t = n, now

        reporter = asyncio.ensure_future(report())
        try:
            await asyncio.gather(*(worker() for _ in range(qd)))
        finally:
            reporter.cancel()
        elapsed = clock() - start
        reconnects, aborts = dev.reconnects, dev.aborts
    return _result(rw, bs, qd, elapsed, latencies, reconnects, aborts)


def run_bench_sync(
    url: str,
    *,
    rw: str = "randread",
    bs: int = 4096,
    seconds: float = 10.0,
    progress: Progress | None = None,
    environ: Mapping[str, str] | None = None,
) -> BenchResult:
    """The ``sync`` engine: one I/O at a time on the blocking device."""
    _check_args(rw, 1, seconds)
    with SyncBlockDevice(url, environ=environ) as dev:
        next_offset = _offsets(rw, _slots(bs, dev.block_size, dev.size), bs)
        write = rw.endswith("write")
        op = dev.write if write else dev.readinto
        data = memoryview(os.urandom(bs)) if write else memoryview(bytearray(bs))
        latencies: list[float] = []
        record = latencies.append
        clock = time.perf_counter
        start = clock()
        end = start + seconds
        tick, last_n, last_t = start + 1.0, 0, start
        while True:
            t0 = clock()
            if t0 >= end:
                break
            if t0 >= tick:
                n = len(latencies)
                if progress is not None:
                    progress(t0 - start, n, (n - last_n) / (t0 - last_t))
                tick, last_n, last_t = tick + 1.0, n, t0
            op(next_offset(), data)
            record(clock() - t0)
        elapsed = clock() - start
        reconnects, aborts = dev.reconnects, dev.aborts
    return _result(rw, bs, 1, elapsed, latencies, reconnects, aborts)
