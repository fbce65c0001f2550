"""`earmark sim`: the simulator as the proof: one seed's run, a swarm of seeds, a sweep."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from earmark.host.policy import Policy
from earmark.sim.scenario import Outcome, Scenario, run_scenario
from earmark.sim.swarm import run_jobs, summarise, swarm_jobs
from earmark.sim.sweep import Grid, cells, draw_png, write_csv
from earmark.units import SizeError, parse_size


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "sim", help="seeded runs of the real stack on the simulator, with oracles",
        description="Runs the page cache, initiator and target on virtual time over simulated "
                    "links, each run drawn from a seed (configuration, schedule, faults) and "
                    "checked by oracles: no stall under reserve, arena never exceeded, no "
                    "acknowledged write lost, reads return the latest write.",
    )
    sub = p.add_subparsers(dest="sim_command", metavar="SUBCOMMAND", required=True)
    run = sub.add_parser("run", help="one seed's run, with a readable trace")
    run.add_argument("--seed", type=int, required=True)
    run.add_argument("--policy", default="reserve", help="policy (default reserve)")
    run.add_argument("--trace", action="store_true", help="print every delivery on the links")
    run.add_argument("--trace-hash", action="store_true", help="print only the trace's hash")
    swarm = sub.add_parser("swarm", help="many seeds, each its own configuration")
    swarm.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    swarm.add_argument("--first", type=int, default=0, help="the first seed (default 0)")
    swarm.add_argument("--no-faults", action="store_true", help="draw no faults at all")
    swarm.add_argument("--no-resets", action="store_true", help="draw no connection resets")
    swarm.add_argument("--no-io-errors", action="store_true", help="draw no disk I/O errors")
    swarm.add_argument("--no-crashes", action="store_true", help="draw no target crashes")
    swarm.add_argument("--no-volatile", action="store_true",
                       help="crashes keep every write (a write-through disk, no volatile cache)")
    swarm.add_argument("--no-timeouts", action="store_true",
                       help="draw no partitions long enough for the initiator to time out")
    swarm.add_argument("--quick", action="store_true",
                       help="draw fewer pages and smaller arenas (a short swarm)")
    sweep = sub.add_parser("sweep", help="writers x arena x latency per policy: CSV and PNG")
    sweep.add_argument("--writers", default="1,16,256,4096", metavar="N[,N...]")
    sweep.add_argument("--pages", type=int, default=2048,
                       help="4 KiB pages per run (at least one a writer; default 2048)")
    sweep.add_argument("--arenas", default="2MiB,4MiB,8MiB", metavar="SIZE[,SIZE...]")
    sweep.add_argument("--latencies", default="0.00005,0.0005,0.005", metavar="S[,S...]",
                       help="one-way link latencies in seconds")
    sweep.add_argument("--seeds", type=int, default=2, help="seeds per cell (default 2)")
    sweep.add_argument("--csv", type=Path, default=Path("sweep.csv"))
    sweep.add_argument("--png", type=Path, default=Path("sweep.png"))
    for q in (run, swarm, sweep):
        q.add_argument("--json", action="store_true", help="one JSON object as the last line")
    for q in (swarm, sweep):
        q.add_argument("--policies", default=",".join(x.value for x in Policy),
                       metavar="P[,P...]", help="policies (default: all)")
        q.add_argument("--workers", type=int, default=1, help="local processes (default 1)")
        q.add_argument("--cluster", metavar="ADDRESS",
                       help="run the seeds on this dask.distributed scheduler instead "
                            "(pip install 'earmark[cluster]')")


def run(args: argparse.Namespace) -> int:
    err = Console(file=sys.stderr)
    # The faults are drawn on purpose: the target's warnings about them are the run's own.
    # One run shows its target's errors (a disk error is part of its story); a swarm or
    # a sweep would print thousands over its progress bar, and counts them in its table.
    logging.getLogger("earmark").setLevel(
        logging.ERROR if args.sim_command == "run" else logging.CRITICAL)
    try:
        if args.sim_command == "run":
            return _run(args, Policy(args.policy))
        policies = [Policy(p) for p in args.policies.split(",")]
        if args.workers < 1:
            raise ValueError("--workers must be at least 1")
        if args.sim_command == "swarm":
            return _swarm(args, policies, err)
        grid = Grid(writers=[int(w) for w in args.writers.split(",")],
                    arenas=[parse_size(a, "--arenas") for a in args.arenas.split(",")],
                    latencies=[float(s) for s in args.latencies.split(",")],
                    policies=policies, seeds=args.seeds, total_pages=args.pages)
    except (ValueError, SizeError) as exc:
        err.print(f"earmark sim: {exc}")
        return 2
    return _sweep(args, grid, err)


def _run(args: argparse.Namespace, policy: Policy) -> int:
    scenario = Scenario.draw(args.seed, policy)
    outcome = run_scenario(scenario, readable=args.trace)
    if args.trace_hash:
        print(outcome.trace_hash)
        return 1 if outcome.failed else 0
    out = Console(file=sys.stderr if args.json else sys.stdout)
    out.print(f"seed {args.seed}: {json.dumps(scenario.as_json())}", soft_wrap=True)
    for line in outcome.trace or ():
        out.print(line, highlight=False)
    out.print(f"[bold]{outcome.outcome}[/] in {outcome.virtual_s:.3f} virtual s, "
              f"{outcome.mbps:.1f} MB/s, {outcome.events} deliveries, "
              f"{outcome.reconnects} reconnects, trace {outcome.trace_hash}", soft_wrap=True)
    if outcome.cycle:
        out.print(outcome.cycle, soft_wrap=True)
    for v in outcome.violations:
        out.print(f"[red]VIOLATION[/] {v.value}" + (f": {outcome.error}" if outcome.error else ""))
    if args.json:
        print(json.dumps({"scenario": scenario.as_json(), "outcome": outcome.as_json()}))
    return 1 if outcome.failed else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _with_bar(err: Console, label: str, total: int) -> tuple[Progress, object]:
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[note]}"), console=err, transient=True)
    return bar, bar.add_task(label, total=total, note="")


def _swarm(args: argparse.Namespace, policies: list[Policy], err: Console) -> int:
    jobs = swarm_jobs(range(args.first, args.first + args.seeds), policies,
                      faults=not args.no_faults, resets=not args.no_resets,
                      io_errors=not args.no_io_errors, timeouts=not args.no_timeouts,
                      crashes=not args.no_crashes, volatile=not args.no_volatile,
                      quick=args.quick)
    start = time.perf_counter()
    bar, task = _with_bar(err, "swarm", len(jobs))
    finished: list[Outcome] = []

    def done(outcome: Outcome) -> None:
        finished.append(outcome)
        failing = sum(o.failed for o in finished)
        bar.update(task, advance=1, note=f"{failing} failing")  # type: ignore[arg-type]

    interrupted = False
    signal.signal(signal.SIGTERM, _interrupt)
    with bar:
        try:
            run_jobs(jobs, workers=args.workers, cluster=args.cluster, done=done)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the summary of the runs that finished
            interrupted = True
    order = [p.value for p in policies]
    summary = summarise(sorted(finished, key=lambda o: (order.index(o.policy), o.seed)))
    title = f"earmark sim swarm: seeds {args.first}..{args.first + args.seeds - 1}"
    table = Table(title=title + (f" (interrupted: {len(finished)} runs)" if interrupted else ""))
    for column in ("policy", "runs", "deadlocks", "I/O errors", "sessions lost", "caches lost",
                   "reconnects",
                   "lost writes", "violations", "first failing seeds"):
        table.add_column(column, justify="left" if column in ("policy",) else "right")
    for s in summary:
        table.add_row(s.policy, str(s.runs), str(s.deadlocks), str(s.io_errors),
                      str(s.sessions_lost), str(s.caches_lost), str(s.reconnects),
                      str(s.lost_writes),
                      f"[red]{s.violations}[/]" if s.violations else "0",
                      ", ".join(map(str, s.failing)) or "-")
    Console(file=sys.stderr if args.json else sys.stdout).print(table)
    if args.json:
        print(json.dumps({"policies": [s.as_json() for s in summary], "interrupted": interrupted,
                          "wall_s": round(time.perf_counter() - start, 1)}))
    return 1 if any(s.violations for s in summary) else 0


def _sweep(args: argparse.Namespace, grid: Grid, err: Console) -> int:
    jobs = grid.jobs()
    bar, task = _with_bar(err, "sweep", len(jobs))
    with bar:
        outcomes = run_jobs(jobs, workers=args.workers, cluster=args.cluster,
                            done=lambda _: bar.update(task, advance=1))  # type: ignore[arg-type]
    grid_cells = cells(jobs, outcomes)
    write_csv(grid_cells, args.csv)
    draw_png(grid_cells, args.png)
    err.print(f"wrote {args.csv} and {args.png}")
    if args.json:
        print(json.dumps({"cells": [c.as_json() for c in grid_cells]}))
    return 1 if any(c.violations for c in grid_cells) else 0
