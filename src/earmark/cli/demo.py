"""`earmark demo`: the deadlock and the cure, on real TCP (or on the simulator with --sim)."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from earmark.cli import loops
from earmark.host.policy import HostTuning, Policy
from earmark.sim.demo import DemoConfig, Row, live, print_json, render
from earmark.sim.stacks import SimStack, TcpStack
from earmark.sim.virtualtime import run_virtual
from earmark.units import SizeError, parse_size


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "demo", help="watch each memory policy deadlock, or not, on real TCP",
        description="Start an embedded earmark target on a free loopback port, then run N "
                    "writers doing random 4 KiB writes through the page cache and earmark's "
                    "initiator, with a small host arena, under each policy. Prints one table.",
    )
    p.add_argument("--writers", default="1,256", metavar="N[,N...]",
                   help="writer counts to sweep (default 1,256)")
    p.add_argument("--policies", default=",".join(x.value for x in Policy), metavar="P[,P...]",
                   help="policies to run (default: none,mempool,throttle,reserve)")
    p.add_argument("--arena", default="4MiB", help="host arena per run (default 4MiB)")
    p.add_argument("--pages", type=int, default=4096,
                   help="4 KiB pages written per run, split among the writers (default 4096)")
    p.add_argument("--slow-net", nargs="?", const=0.002, type=float, default=0.0,
                   metavar="SECONDS", help="add target-side latency per write (default 2 ms); "
                                           "with --sim, that much round-trip time on the link")
    p.add_argument("--sim", action="store_true",
                   help="run on the simulator: the same initiator and target code over a "
                        "simulated network on virtual time (deterministic, no sockets)")
    p.add_argument("--seed", type=int, default=1, help="workload seed (default 1)")
    p.add_argument("--mapped", action="store_true",
                   help="the writers map each page writable, store into it and unmap it, "
                        "instead of pwrite (reserve reserves its writeback at map time)")
    p.add_argument("--loop", choices=loops.LOOPS, default="auto",
                   help="the event loop the writers, page cache and initiator run on over "
                        "TCP: uvloop if installed (auto, the default), or force one "
                        "(--sim runs on its own virtual-time loop)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object as the last line: {"runs": [...]}')


def run(args: argparse.Namespace) -> int:
    err = Console(file=sys.stderr)
    try:
        writers = [int(w) for w in args.writers.split(",")]
        if any(w < 1 for w in writers):
            raise ValueError
    except ValueError:
        err.print(f"earmark demo: --writers {args.writers!r} must be positive counts like 1,64")
        return 2
    try:
        policies = [Policy(p) for p in args.policies.split(",")]
    except ValueError:
        err.print(f"earmark demo: --policies {args.policies!r}: use names from "
                  f"{', '.join(p.value for p in Policy)}")
        return 2
    try:
        arena = parse_size(args.arena, "--arena")
    except SizeError as exc:
        err.print(f"earmark demo: {exc}")
        return 2
    if arena < 2 << 20:
        err.print("earmark demo: --arena must be at least 2MiB: the initiator's receive "
                  "buffer alone takes 1 MiB")
        return 2
    if args.pages < 1:
        err.print("earmark demo: --pages must be at least 1")
        return 2
    try:
        loop = loops.loop_name(args.loop)
    except loops.LoopUnavailableError as exc:
        err.print(f"earmark demo: {exc}")
        return 2
    config = DemoConfig(writers=writers, policies=policies, arena_bytes=arena // 64 * 64,
                        total_pages=args.pages, seed=args.seed, tuning=HostTuning(),
                        mapped=args.mapped)
    if args.sim:
        async def simulate() -> list[Row]:
            async with SimStack(config.lun_bytes) as stack:
                return await live(stack, config, err)

        rows = run_virtual(simulate, **({"latency": args.slow_net / 2} if args.slow_net else {}))
    else:
        with TcpStack(config.lun_bytes, slow_net=args.slow_net) as stack:
            async def on_tcp(stack: TcpStack = stack) -> list[Row]:
                err.print(f"embedded target at {stack.target.url}, host on {loops.running()}")
                return await live(stack, config, err)

            rows = loops.run(on_tcp(), loop)
    render(rows, Console(file=sys.stderr if args.json else sys.stdout))
    if args.json:
        print_json(rows)
    return 0
