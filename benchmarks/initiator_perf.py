"""`earmark bench` against libiscsi's `iscsi-perf`, same tgtd, same LUN, same run.

Three workloads: 4 KiB random read at queue depth 32 and 1, 1 MiB sequential
read at queue depth 8. Both tools run as the commands a user would type
(`earmark bench --json`, `iscsi-perf`), one after the other against one tgtd on
127.0.0.1; each pair runs ``--repeat`` times and the best of each side counts,
because the machine may be shared and a neighbour's burst should not decide a
ratio. Goals: ratio >= 0.5, 0.7, 0.8.

`earmark bench` picks its engine as a user gets it by default: the blocking one
at queue depth 1, asyncio above (``engine`` in each result). At depth 1 the
asyncio engine is measured too, and reported beside it (``async_iops``,
``async_ratio``), so the cost of the event loop stays in view.

    python benchmarks/initiator_perf.py [--json] [--time SECONDS] [--repeat N] [--loop L]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import repo_root  # noqa: F401  (before tools: puts the repository root on sys.path)
from tools.peers import Tgtd, iscsi_perf

LUN_BYTES = 256 << 20
BLOCK = 512  # tgtd's block size
CASES = {
    # name: (earmark --rw, bytes per I/O, queue depth, iscsi-perf random)
    "randread_4k_qd32": ("randread", 4096, 32, True),
    "randread_4k_qd1": ("randread", 4096, 1, True),
    "seqread_1m_qd8": ("read", 1 << 20, 8, False),
}
GOALS = {"randread_4k_qd32": 0.5, "randread_4k_qd1": 0.7, "seqread_1m_qd8": 0.8}
EARMARK = Path(sys.executable).parent / "earmark"


def earmark_bench(url: str, rw: str, bs: int, qd: int, seconds: int, loop: str,
                  engine: str = "auto") -> dict[str, object]:
    done = subprocess.run(
        [str(EARMARK), "bench", url, "--rw", rw, "--bs", str(bs), "--qd", str(qd),
         "--time", str(seconds), "--loop", loop, "--engine", engine, "--json"],
        capture_output=True, text=True, timeout=seconds + 60, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"earmark bench failed: {done.stderr.strip()}")
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--time", type=int, default=5, help="seconds per run (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side (default 3)")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="earmark's event loop (auto: uvloop if installed)")
    args = parser.parse_args()
    result: dict[str, dict[str, object]] = {}
    with Tgtd(LUN_BYTES) as tgtd:
        url = tgtd.url()
        for name, (rw, bs, qd, random) in CASES.items():
            ours = theirs = ours_async = 0.0
            engine = ""
            for _ in range(args.repeat):
                run = earmark_bench(url, rw, bs, qd, args.time, args.loop)
                ours = max(ours, float(str(run["iops"])))
                engine = str(run["engine"])
                if engine != "async":
                    run = earmark_bench(url, rw, bs, qd, args.time, args.loop, "async")
                    ours_async = max(ours_async, float(str(run["iops"])))
                perf = iscsi_perf(url, blocks=bs // BLOCK, queue_depth=qd, random=random,
                                  seconds=args.time)
                theirs = max(theirs, float(perf.iops))
            ratio = ours / theirs if theirs else 0.0
            entry: dict[str, object] = {"earmark_iops": round(ours),
                                        "libiscsi_iops": round(theirs),
                                        "ratio": round(ratio, 3), "engine": engine}
            if ours_async:
                entry["async_iops"] = round(ours_async)
                entry["async_ratio"] = round(ours_async / theirs if theirs else 0.0, 3)
            result[name] = entry
            if not args.json:
                mark = "ok" if ratio >= GOALS[name] else f"below goal {GOALS[name]}"
                extra = (f"; async engine {ours_async:,.0f} IOPS, ratio {ours_async / theirs:.2f}"
                         if ours_async and theirs else "")
                print(f"{name}: earmark ({engine} engine) {ours:,.0f} IOPS, libiscsi "
                      f"{theirs:,.0f} IOPS, ratio {ratio:.2f} ({mark}){extra}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
