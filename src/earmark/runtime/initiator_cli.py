"""`earmark ls` and `earmark bench`: the initiator's subcommands.

Every failure a user can cause (bad URL, unknown target, refused login,
unreachable host, a SCSI error) is one line on stderr and exit code 2; a
traceback would be a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from earmark.initiator.errors import InitiatorError
from earmark.initiator.url import ENV_SECRET, ENV_USER, IscsiUrl, parse_url
from earmark.runtime.initiator_bench import (
    ENGINES,
    RW_MODES,
    engine_for,
    run_bench,
    run_bench_sync,
)
from earmark.runtime.initiator_device import BlockDevice, discover
from earmark.scsi import cdb as C
from earmark.scsi.sense import ScsiError
from earmark.units import parse_size

T = TypeVar("T")

_DEVICE_TYPES = {0x00: "disk", 0x05: "cd/dvd", 0x0C: "controller", 0x1F: "no device"}


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    creds = f"CHAP credentials: iscsi://user%%secret@host/... or ${ENV_USER}/${ENV_SECRET}"
    ls = subparsers.add_parser(
        "ls", help="list the targets and LUNs of an iSCSI portal",
        description=f"SendTargets discovery, then every LUN with its type and size. {creds}.",
    )
    ls.add_argument("url", help="iscsi://[user[%%secret]@]host[:port]")
    bench = subparsers.add_parser(
        "bench", help="measure IOPS, throughput and latency of an iSCSI LUN",
        description=f"fio-like load on one LUN (randwrite/write overwrite it). {creds}.",
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
    bench.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                       help="the async engine's event loop: uvloop if installed (auto, the "
                            "default), or force one")


def event_loop_name(choice: str = "auto") -> str:
    """uvloop when installed (DESIGN.md §8: an optional speed-up behind the same code)."""
    if choice != "auto":
        return choice
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def _run(coro: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    if event_loop_name(loop) == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "ls":
            return _run(_ls(args.url))
        return _bench(args)
    except (InitiatorError, ScsiError, ValueError) as exc:
        print(f"earmark {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _ls(url_text: str) -> int:
    """Every target the portal lists, each with its LUNs; a target that refuses us is
    reported (stderr, exit 2 at the end) and the listing goes on with the next."""
    portal = parse_url(url_text, need_target=False, environ=os.environ)
    refused = 0
    for target in await discover(portal):
        print(f"Target: {target.name}  Portal: {', '.join(target.addresses)}", flush=True)
        url = IscsiUrl(portal.host, portal.port, target.name, 0, portal.user, portal.secret,
                       portal.target_user, portal.target_secret)
        try:
            async with BlockDevice(url, geometry=False, max_attempts=1) as dev:
                report = bytearray(4096)
                await dev.execute(C.report_luns(len(report)), read_into=memoryview(report))
                for lun in C.parse_report_luns(memoryview(report)):
                    print(f"  LUN {lun}: {await _describe(dev, lun)}")
        except (InitiatorError, ScsiError) as exc:
            refused += 1
            print(f"earmark ls: error: {target.name}: {exc}", file=sys.stderr, flush=True)
    return 2 if refused else 0


async def _describe(dev: BlockDevice, lun: int) -> str:
    inq = bytearray(96)
    await dev.execute(C.inquiry(len(inq)), read_into=memoryview(inq), lun=lun)
    info = C.parse_standard_inquiry(memoryview(inq))
    kind = _DEVICE_TYPES.get(info.device_type, f"type 0x{info.device_type:02x}")
    text = f"{kind} ({info.vendor} {info.product})".strip()
    if info.device_type == 0:
        cap_data = bytearray(32)
        await dev.execute(C.read_capacity_16(32), read_into=memoryview(cap_data), lun=lun)
        cap = C.parse_read_capacity_16(memoryview(cap_data))
        size = cap.num_blocks * cap.block_size
        text += f", {_human(size)} ({cap.num_blocks} blocks of {cap.block_size} B)"
    return text


def _human(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} B"


def _bench(args: argparse.Namespace) -> int:
    bs = parse_size(args.bs, "--bs")
    interactive = sys.stderr.isatty()

    def progress(elapsed: float, ios: int, iops: float) -> None:
        line = f"{elapsed:5.1f} s  {iops:10,.0f} IOPS  {iops * bs / (1 << 20):8,.1f} MiB/s"
        print(f"\r{line}" if interactive else line, end="" if interactive else "\n",
              file=sys.stderr, flush=True)

    engine = engine_for(args.engine, args.qd)
    loop = event_loop_name(args.loop)
    if engine == "sync":
        result = run_bench_sync(args.url, rw=args.rw, bs=bs, seconds=args.time,
                                progress=progress, environ=os.environ)
        label = "sync engine"
    else:
        if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValueError("--loop uvloop: uvloop is not installed (pip install uvloop)")
        result = _run(run_bench(
            args.url, rw=args.rw, bs=bs, qd=args.qd, seconds=args.time, progress=progress,
            environ=os.environ,
        ), loop)
        label = f"async engine, {loop}"
    if interactive:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps({**result.as_dict(), "engine": engine,
                          "event_loop": loop if engine == "async" else None}))
    else:
        print(f"{result.summary()} [{label}]")
    return 0
