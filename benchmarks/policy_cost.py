"""What the reserve discipline costs: reserve MB/s beside mempool's and throttle's, same stack.

mempool and throttle are what people run today (Linux's emergency reserves and its dirty
throttling, modelled as strong as Linux makes them: `earmark.host.policy`). Each writer
count runs the demo's workload through the page cache and earmark's initiator with the
demo's arena, on real TCP (the host on the loop `earmark demo` runs it on: uvloop when
installed, as its ``--loop auto``) to an `earmark serve` process (its LUN a file in /dev/shm,
memory as the simulator's target has) and on the simulator to the same target code. The
target is a process of its own, as on another machine: an embedded target's thread would
share this process's interpreter lock, and which policy's rhythm happened to hand the
lock over well would move its figures (best of 5 at 1 writer, reserve against mempool:
0.924, 0.945, 0.88 in three runs of the same code with the target on a thread; 1.126
beside 1.041 in one probe of each). The three policies alternate, ``--repeats`` rounds
each on TCP (``--sim-repeats`` on the simulator, where a round differs only by its seed:
virtual time does not move with the machine), the order turning one place each round so
no policy always runs first or last, and the best run of each counts (noise only ever
slows a run down). On TCP the host is what limits (its CPU time is its wall time) and
this machine's CPU speed itself moves: one fixed Python loop, timed 12 times in a row on
a quiet machine, took 0.157 to 0.402 s; so a policy needs many runs for one of them to
fall in a fast stretch, and even at 15 rounds of about a second each the best of one
policy can be a lucky stretch the other never met (4 writers, reserve against mempool,
best of 7 then of 15 on the same code: 0.945, 0.869). So the medians are printed beside
the best, and every run's figure, and the paired ratio: the median over rounds of
reserve's run against the baseline's in the same round, seconds apart, which the
machine's drift moves least (0.989 and 1.046 in those two runs). The LUN is written
through before the target starts and one run that counts for nothing goes first, so no
policy's figure pays the target's first touch of its pages. A run writes ``--pages``
pages (16 times the arena by default, the whole LUN): the demo's 2,048 pages are two
arenas' worth, so a run that short measures mostly the first fill, which no policy has
to wait for, and the final fsync, and a 0.2-second run on TCP moves with every neighbour
on a shared machine (at 8 times the arena, one writer's runs of one policy on TCP spread
from 23.6 to 36.3 MB/s beside two busy helpers). A baseline that deadlocks there has no
figure (null): the comparison is only made where it completes. Reserve must complete and
verify everywhere. Goal: vs_mempool and vs_throttle >= 0.95 wherever they exist.

    python benchmarks/policy_cost.py [--json] [--repeats 15] [--sim-repeats 3] [--pages 16384]
                                     [--writers 1,4,16,64]

With --json the last line is {"tcp": {"1": {"reserve_mbps", "mempool_mbps",
"throttle_mbps", "vs_mempool", "vs_throttle", and the same of the medians:
"reserve_median_mbps", ..., "vs_mempool_median", "vs_throttle_median", and the paired
ratios "vs_mempool_paired", "vs_throttle_paired"}, ...}, "sim": {...}}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from rich.console import Console

import repo_root  # noqa: F401  (before tools: puts the repository root on sys.path)
from earmark.cli import loops
from earmark.host.policy import Policy
from earmark.sim.demo import DemoConfig, Row, live
from earmark.sim.stacks import RemoteStack, SimStack
from earmark.sim.virtualtime import run_virtual
from tools.serve import EarmarkServe

POLICIES = (Policy.MEMPOOL, Policy.THROTTLE, Policy.RESERVE)
Figures = dict[str, float | None]


def fold(run: list[Row], runs: dict[Policy, list[float] | None]) -> None:
    """Fold one round's rows in: a run that did not complete leaves its policy at None
    for good (a deadlock is not noise); reserve must complete and verify."""
    for row in run:
        r = row.result
        policy = Policy(r.policy)
        ok = r.outcome == "completed" and row.verified is True
        if policy is Policy.RESERVE and not ok:
            raise SystemExit(f"reserve with {r.writers} writer(s) did not complete and verify "
                             f"({r.outcome}: {r.cycle})")
        seen = runs.setdefault(policy, [])
        if seen is not None:
            if ok:
                seen.append(r.mbps)
            else:
                runs[policy] = None


def figures(runs: dict[Policy, list[float] | None]) -> Figures:
    """The best run of each policy and the ratios of reserve's to the baselines'; the
    medians beside them, to show how far a row moves between runs; and the paired
    ratio: the median, over rounds, of reserve's run against the baseline's run of the
    same round (seconds apart, on the same stretch of the machine's speed)."""
    out: Figures = {}
    for how, pick in (("", max), ("_median", statistics.median)):
        best = {p: (pick(v) if v else None) for p, v in runs.items()}
        reserve = best[Policy.RESERVE]
        assert reserve is not None
        for p, v in best.items():
            out[f"{p.value}{how}_mbps"] = round(v, 3) if v is not None else None
        for base in (Policy.MEMPOOL, Policy.THROTTLE):
            theirs = best[base]
            out[f"vs_{base.value}{how}"] = round(reserve / theirs, 3) if theirs else None
    ours = runs[Policy.RESERVE]
    assert ours is not None
    for base in (Policy.MEMPOOL, Policy.THROTTLE):
        theirs_runs = runs[base]
        out[f"vs_{base.value}_paired"] = round(statistics.median(
            a / b for a, b in zip(ours, theirs_runs, strict=True)), 3) if theirs_runs else None
    return out


def measure(where: str, writers: int, args: argparse.Namespace, url: str) -> Figures:
    runs: dict[Policy, list[float] | None] = {}
    quiet = Console(quiet=True)
    for round_ in range(args.repeats if where == "tcp" else args.sim_repeats):
        turn = round_ % len(POLICIES)
        config = DemoConfig(writers=[writers], policies=list(POLICIES[turn:] + POLICIES[:turn]),
                            total_pages=args.pages, seed=round_ + 1)
        if where == "tcp":
            rows = loops.run(live(RemoteStack(url), config, quiet))
        else:
            async def simulate(config: DemoConfig = config) -> list[Row]:
                async with SimStack(config.lun_bytes) as stack:
                    return await live(stack, config, quiet)

            rows = run_virtual(simulate)
        fold(rows, runs)
    out = figures(runs)
    every = ", ".join(f"{p.value} " + (" ".join(f"{v:.1f}" for v in got) if got else "deadlocked")
                      for p, got in runs.items())
    print(f"{where:3} {writers:>4} writers: reserve {out['reserve_mbps']} MB/s, mempool "
          f"{out['mempool_mbps']} (x{out['vs_mempool']}), throttle {out['throttle_mbps']} "
          f"(x{out['vs_throttle']}); medians x{out['vs_mempool_median']}, "
          f"x{out['vs_throttle_median']}; paired x{out['vs_mempool_paired']}, "
          f"x{out['vs_throttle_paired']}; every run, MB/s: {every}", flush=True)
    return out


def positive(text: str) -> int:
    """A count of rounds, pages or writers: a whole number above 0, or argparse's one line."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return n


def writer_counts(text: str) -> list[int]:
    return [positive(w) for w in text.split(",")]


def warm_up(url: str, pages: int) -> None:
    """One run that counts for nothing: the target's first session, the first commands
    through its arena and this process's first imports are paid by no policy's figure."""
    config = DemoConfig(writers=[4], policies=[Policy.RESERVE], total_pages=pages)
    loops.run(live(RemoteStack(url), config, Console(quiet=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--repeats", type=positive, default=15,
                        help="rounds per policy on TCP (default 15)")
    parser.add_argument("--sim-repeats", type=positive, default=3,
                        help="rounds per policy on the simulator (default 3)")
    parser.add_argument("--pages", type=positive, default=16384,
                        help="pages per run (default 16384: 16 times the demo's 4 MiB arena)")
    parser.add_argument("--writers", type=writer_counts, default=[1, 4, 16, 64],
                        help="writer counts (1,4,16,64)")
    args = parser.parse_args()
    counts: list[int] = args.writers
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="earmark-policy-cost-",
                                     dir=shm if shm.is_dir() else None) as tmp:
        lun = Path(tmp) / "lun.img"
        # Written, not sparse: the first run to touch a page of /dev/shm would pay its
        # allocation, and that run is always the same policy's.
        lun.write_bytes(bytes(DemoConfig().lun_bytes))
        with EarmarkServe(lun) as target:
            print(f"TCP: the host on {loops.loop_name()}, the target an earmark serve process",
                  flush=True)
            warm_up(target.url, args.pages)
            result = {where: {str(n): measure(where, n, args, target.url) for n in counts}
                      for where in ("tcp", "sim")}
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
