"""`earmark bench URL`: a small fio for one LUN, on either initiator engine.

Progress goes to stderr once a second; the result to stdout (one JSON object
with --json). Every failure a user can cause is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import earmark.cli.loops as loops
from earmark.cli.ls import CREDENTIALS
from earmark.initiator.errors import InitiatorError
from earmark.scsi.sense import ScsiError
from earmark.sim.bench import ENGINES, RW_MODES, engine_for, run_bench, run_bench_sync
from earmark.units import parse_size


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = subparsers.add_parser(
        "bench", help="measure IOPS, throughput and latency of an iSCSI LUN",
        description=f"fio-like load on one LUN (randwrite/write overwrite it). {CREDENTIALS}.",
    )
    bench.add_argument("url", help="iscsi://[user[%%secret]@]host[:port]/target-iqn/lun")
    bench.add_argument("--rw", choices=RW_MODES, default="randread")
    bench.add_argument("--bs", default="4k", help="bytes per I/O (default 4k)")
    bench.add_argument("--qd", type=int, default=32, help="I/Os in flight (default 32)")
    bench.add_argument("--time", type=float, default=10.0, help="seconds (default 10)")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    bench.add_argument("--engine", choices=ENGINES, default="auto",
                       help="async (I/Os in flight together, asyncio), sync (one at a time, "
                            "blocking socket, as fio's psync); auto: sync at --qd 1, else async")
    bench.add_argument("--loop", choices=loops.LOOPS, default="auto",
                       help="the async engine's event loop: uvloop if installed (auto, the "
                            "default), or force one")


def run(args: argparse.Namespace) -> int:
    try:
        return _bench(args)
    except (InitiatorError, ScsiError, ValueError) as exc:
        print(f"earmark bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _bench(args: argparse.Namespace) -> int:
    bs = parse_size(args.bs, "--bs")
    interactive = sys.stderr.isatty()

    def progress(elapsed: float, ios: int, iops: float) -> None:
        line = f"{elapsed:5.1f} s  {iops:10,.0f} IOPS  {iops * bs / (1 << 20):8,.1f} MiB/s"
        print(f"\r{line}" if interactive else line, end="" if interactive else "\n",
              file=sys.stderr, flush=True)

    engine = engine_for(args.engine, args.qd)
    loop: str | None = None
    if engine == "sync":
        result = run_bench_sync(args.url, rw=args.rw, bs=bs, seconds=args.time,
                                progress=progress, environ=os.environ)
        label = "sync engine"
    else:
        loop = loops.loop_name(args.loop)
        result = loops.run(run_bench(
            args.url, rw=args.rw, bs=bs, qd=args.qd, seconds=args.time, progress=progress,
            environ=os.environ,
        ), loop)
        label = f"async engine, {loop}"
    if interactive:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps({**result.as_dict(), "engine": engine,
                          "event_loop": loop}))
    else:
        print(f"{result.summary()} [{label}]")
    return 0
