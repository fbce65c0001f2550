"""`earmark check`: every schedule of a small writers/writeback system, under each policy.

One configuration prints its verdict (and the shortest schedule into a deadlock,
step by step); ``--sweep`` checks a grid of small systems and prints one line
per policy: on how many of them it can deadlock.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

from earmark.check.explore import Verdict, explore
from earmark.check.model import PAGE, Config
from earmark.host.policy import Policy

__all__ = ["add_parser", "run", "sweep"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "check", help="search every schedule of a small system for a memory deadlock",
        description="Writers dirty pages in a bounded memory; writeback slots clean them, "
                    "each needing a request, a task descriptor and a receive buffer (once "
                    "per request, with --merge adjacent pages sharing one). Every "
                    "interleaving is explored; a deadlock is printed with the shortest "
                    "schedule that reaches it. Memory is in units: a page is 4, a "
                    "descriptor 1.",
    )
    p.add_argument("--policy", choices=[x.value for x in Policy], default="reserve")
    p.add_argument("--writers", type=int, default=2)
    p.add_argument("--pages", type=int, default=4, help="pages each writer dirties (default 4)")
    p.add_argument("--arena", type=int, default=18, help="units of memory (default 18)")
    p.add_argument("--writebacks", type=int, default=2, help="writeback slots (default 2)")
    p.add_argument("--emergency", type=int, default=0,
                   help="units only writeback may use (mempool; default 0)")
    p.add_argument("--dirty-limit", type=int, default=2,
                   help="dirty pages above which writers wait (throttle; default 2)")
    p.add_argument("--ratelimit", type=int, default=1,
                   help="pages a writer dirties before its first check; later ones come "
                        "as Linux's balance_dirty_pages spaces them (throttle; default 1)")
    p.add_argument("--merge", type=int, default=1,
                   help="most adjacent pages one writeback request takes (default 1)")
    p.add_argument("--sweep", action="store_true",
                   help="check every policy on a grid of small systems instead")
    p.add_argument("--json", action="store_true", help="last line: one JSON object")


def run(args: argparse.Namespace) -> int:
    if args.sweep:
        results = sweep()
        for policy, verdicts in results.items():
            stuck = [v for v in verdicts if v.deadlock is not None]
            states = sum(v.states for v in verdicts)
            line = (f"{policy.value:9} deadlocks on {len(stuck)} of {len(verdicts)} systems "
                    f"({states} states)")
            if stuck:
                line += f"; smallest: {_shape(stuck[0].config)}"
            print(line)
        if args.json:
            print(json.dumps({p.value: {"systems": len(v),
                                        "deadlocked": sum(x.deadlock is not None for x in v),
                                        "states": sum(x.states for x in v)}
                              for p, v in results.items()}))
        return 0
    try:
        config = Config(Policy(args.policy), args.writers, args.pages, args.arena,
                        args.writebacks, args.emergency, args.dirty_limit, args.ratelimit,
                        args.merge)
        verdict = explore(config)
    except ValueError as exc:
        print(f"earmark check: error: {exc}", file=sys.stderr)
        return 2
    print(verdict.summary())
    for n, step in enumerate(verdict.trace, 1):
        print(f"  {n:3}. {step}")
    if args.json:
        print(json.dumps({"policy": config.policy.value, "states": verdict.states,
                          "deadlock": verdict.deadlock, "trace": list(verdict.trace)}))
    return 0


def _shape(c: Config) -> str:
    text = f"{c.writers} writers x {c.pages} pages, arena {c.arena}, {c.writebacks} writebacks"
    text += f", emergency {c.emergency}" if c.emergency else ""
    return text + (f", requests of up to {c.merge} pages" if c.merge > 1 else "")


def sweep() -> dict[Policy, list[Verdict]]:
    """Every policy on the same grid of small systems (a few seconds in all)."""
    results: dict[Policy, list[Verdict]] = {}
    for policy in Policy:
        verdicts = []
        for merge, writers, pages, arena, writebacks in itertools.product(
                (1, 2), (1, 2, 3), (1, 2, 4), (8, 12, 18, 26), (1, 2)):
            # mempool: a pool that holds every writeback's request and task at once but
            # not one receive buffer more (one unit short of always finishing one);
            # throttle: Linux's default dirty ratio, 20 % of the pages memory holds.
            emergency = 2 * writebacks if policy is Policy.MEMPOOL else 0
            if arena - emergency < (7 if policy is Policy.RESERVE else 4):
                continue
            dirty_limit = max(1, arena // PAGE // 5)
            verdicts.append(explore(Config(policy, writers, pages, arena, writebacks,
                                           emergency, dirty_limit, merge=merge)))
        results[policy] = verdicts
    return results
