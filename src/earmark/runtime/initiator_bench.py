"""`earmark bench`: a small fio for one iSCSI LUN.

``qd`` long-lived workers each keep one command in flight (no task per I/O),
so the queue depth on the wire is exactly ``qd``. Latency is measured per I/O
around the device call, i.e. what an application sees, admission included.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from earmark.runtime.initiator_device import BlockDevice

__all__ = ["RW_MODES", "BenchResult", "run_bench"]

RW_MODES = ("randread", "randwrite", "read", "write")
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

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.rw} bs={self.bs} qd={self.qd}: {self.iops:,.0f} IOPS, "
            f"{self.mib_per_s:,.1f} MiB/s, latency p50 {self.lat_p50_us:,.0f} us, "
            f"p99 {self.lat_p99_us:,.0f} us, max {self.lat_max_us:,.0f} us "
            f"({self.ios} I/Os in {self.seconds:.1f} s)"
        )


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run_bench(
    url: str,
    *,
    rw: str = "randread",
    bs: int = 4096,
    qd: int = 32,
    seconds: float = 10.0,
    progress: Callable[[float, int, float], None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> BenchResult:
    """Run the workload; ``progress(elapsed, ios, iops_last_second)`` once a second."""
    if rw not in RW_MODES:
        raise ValueError(f"--rw must be one of {', '.join(RW_MODES)}, not {rw!r}")
    if qd < 1 or seconds <= 0:
        raise ValueError("--qd must be >= 1 and --time > 0")
    async with BlockDevice(url, environ=environ) as dev:
        if bs % dev.block_size or bs > dev.size:
            raise ValueError(f"--bs {bs} must be a multiple of the {dev.block_size} B block "
                             f"size and at most the {dev.size} B device")
        slots = dev.size // bs
        write = rw.endswith("write")
        rand = rw.startswith("rand")
        payload = memoryview(os.urandom(bs))
        latencies: list[float] = []
        record = latencies.append
        clock = time.perf_counter
        start = clock()
        end = start + seconds
        cursor = 0

        async def worker() -> None:
            nonlocal cursor
            buf = memoryview(bytearray(bs))
            # random() scaled, not randrange(): about 0.2 us less per I/O, and uniform
            # to within slots / 2**53.
            uniform = random.Random().random
            op = dev.write if write else dev.readinto
            data = payload if write else buf
            while True:
                t0 = clock()
                if t0 >= end:
                    return
                if rand:
                    offset = int(uniform() * slots) * bs
                else:
                    offset = cursor * bs
                    cursor = (cursor + 1) % slots
                await op(offset, data)
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
        reconnects = dev.reconnects
    latencies.sort()
    n = len(latencies)
    return BenchResult(
        rw=rw, bs=bs, qd=qd, seconds=elapsed, ios=n, iops=n / elapsed,
        mib_per_s=n * bs / elapsed / (1 << 20),
        lat_p50_us=_percentile(latencies, 0.50) * 1e6,
        lat_p99_us=_percentile(latencies, 0.99) * 1e6,
        lat_max_us=(latencies[-1] if latencies else 0.0) * 1e6,
        reconnects=reconnects,
    )
