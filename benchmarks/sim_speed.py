"""How fast the simulator runs the real stack: loop events, simulated 4 KiB writes and
simulated seconds per wall-second.

One run is the writers workload (page cache, earmark's initiator, an earmark target)
on the virtual-time loop over simulated links, under ``reserve``. Loop events are the
callbacks the loop ran (every task step, timer and delivery); simulated writes are
the 4 KiB page writes the writers completed. The figures are those of the workload
itself, from the open session to the last fsync: the stack's start-up (building the
target's LUN and arena, logging in) is not counted, and the default run is long
enough to be in its steady state. ``--workers N`` runs N such runs at once,
one per local process (seeds 1..N), and adds their rates up over the pool's wall time
(start-ups included): what a swarm gets from N cores. Goals (issue 14): >= 100,000
events/s and >= 30,000 simulated writes/s.

    python benchmarks/sim_speed.py [--json] [--writers 64] [--pages 32768] [--workers 1]

With --json the last line is {"events_per_s", "writes_per_s", "sim_s_per_wall_s",
"events", "writes", "sim_s", "wall_s", "workers", "events_per_cpu_s", "writes_per_cpu_s"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from earmark.host.policy import HostTuning, Policy
from earmark.memory import Arena
from earmark.memory.levels import PAGE_BYTES
from earmark.sim.stacks import SimStack
from earmark.sim.virtualtime import VirtualTimeLoop, run_virtual
from earmark.sim.workload import RunResult, Workload, run_writers

LUN_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class Figures:
    events: int
    writes: int
    sim_s: float
    wall_s: float
    cpu_s: float


def one_run(seed: int, writers: int, pages: int, arena_bytes: int) -> Figures:
    work = Workload(writers=writers, pages_per_writer=max(1, pages // writers),
                    span_pages=LUN_BYTES // PAGE_BYTES, seed=seed)

    async def main() -> tuple[RunResult, Figures]:
        async with SimStack(LUN_BYTES) as stack:
            arena = Arena(arena_bytes, name="host arena")
            async with stack.open(arena, Policy.RESERVE) as device:
                loop = asyncio.get_running_loop()
                assert isinstance(loop, VirtualTimeLoop)
                events, start, cpu = loop.events, time.perf_counter(), time.process_time()
                result = await run_writers(arena, device, Policy.RESERVE, work, HostTuning())
                return result, Figures(
                    loop.events - events, result.bytes_written // PAGE_BYTES, result.seconds,
                    time.perf_counter() - start, time.process_time() - cpu)

    result, figures = run_virtual(main, window=1 << 20, sndbuf=256 << 10)
    if result.outcome != "completed":
        raise SystemExit(f"reserve did not complete: {result.cycle}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--pages", type=int, default=32768)
    parser.add_argument("--arena", type=int, default=8 << 20, help="host arena, bytes")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.workers == 1:
        runs = [one_run(1, args.writers, args.pages, args.arena)]
    else:
        with ProcessPoolExecutor(args.workers) as pool:
            futures = [pool.submit(one_run, seed, args.writers, args.pages, args.arena)
                       for seed in range(1, args.workers + 1)]
            runs = [f.result() for f in futures]
    wall = time.perf_counter() - start if args.workers > 1 else runs[0].wall_s
    events, writes = sum(r.events for r in runs), sum(r.writes for r in runs)
    sim_s, cpu = sum(r.sim_s for r in runs), sum(r.cpu_s for r in runs)
    out = {"events_per_s": round(events / wall), "writes_per_s": round(writes / wall),
           "sim_s_per_wall_s": round(sim_s / wall, 4), "events": events, "writes": writes,
           "sim_s": round(sim_s, 4), "wall_s": round(wall, 3), "workers": args.workers,
           # per CPU-second of the runs: what a shared machine's load does not change
           "events_per_cpu_s": round(events / cpu), "writes_per_cpu_s": round(writes / cpu)}
    print(f"{events:,} loop events, {writes:,} simulated 4 KiB writes, {sim_s:.3f} simulated "
          f"s in {wall:.2f} wall s ({args.workers} process(es)): {out['events_per_s']:,} "
          f"events/s, {out['writes_per_s']:,} writes/s")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
