"""What the reserve discipline costs: reserve MB/s over throttle MB/s, same stack, same run.

Throttle is the discipline people run today, and where it completes (one writer
here) it is the fair baseline. Both run the demo's workload on real TCP to the
same embedded target, alternating, `--repeats` times each; the best run of each
counts (the machine's noise only ever slows a run down).

    python benchmarks/policy_cost.py [--json] [--repeats 5] [--pages 8192]
"""

from __future__ import annotations

import argparse
import asyncio
import json

from rich.console import Console

from earmark.host.policy import Policy
from earmark.sim.demo import DemoConfig, Row, live
from earmark.sim.stacks import TcpStack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pages", type=int, default=8192)
    parser.add_argument("--writers", type=int, default=1)
    args = parser.parse_args()
    quiet = Console(quiet=True)
    best: dict[Policy, float] = {}
    with TcpStack(64 << 20) as stack:
        for round_ in range(args.repeats):
            for policy in (Policy.THROTTLE, Policy.RESERVE):
                config = DemoConfig(writers=[args.writers], policies=[policy],
                                    total_pages=args.pages, seed=round_ + 1)
                (row,) = asyncio.run(live(stack, config, quiet))
                check(row)
                best[policy] = max(best.get(policy, 0.0), row.result.mbps)
                print(f"round {round_ + 1}: {policy.value:8} {row.result.mbps:7.2f} MB/s "
                      f"p99 {row.result.p99_ms:.1f} ms")
    result = {
        "reserve_mbps": round(best[Policy.RESERVE], 3),
        "throttle_mbps": round(best[Policy.THROTTLE], 3),
        "ratio": round(best[Policy.RESERVE] / best[Policy.THROTTLE], 3),
    }
    if not args.json:
        print(f"reserve / throttle = {result['ratio']} (best of {args.repeats} each)")
    print(json.dumps(result))


def check(row: Row) -> None:
    r = row.result
    if r.outcome != "completed" or row.verified is not True:
        raise SystemExit(
            f"{r.policy} with {r.writers} writer(s) did not complete and verify "
            f"({r.outcome}: {r.cycle}); the cost comparison needs both to complete"
        )


if __name__ == "__main__":
    main()
