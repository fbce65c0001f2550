"""`earmark serve` against tgtd, measured by libiscsi's `iscsi-perf`, in the same run.

Three workloads: 4 KiB random read at queue depth 32 and 1, 1 MiB sequential read
at queue depth 8. Both targets serve the same LUN file, filled with real data
first (a sparse file would let both skip the page cache's copy of zeros), and
both are started once and stay up; the runs alternate earmark, tgtd, earmark,
... so a neighbour's burst on a shared machine hits both, and the best of
``--repeat`` runs counts for each. Only one target is driven at a time: the
other sits idle with its session closed. Goals: ratio >= 0.5, 0.7, 0.8.

    python benchmarks/target_perf.py [--json] [--seconds 5] [--repeat 3] [--loop auto]

With --json the last line is one JSON object: {case: {earmark_iops, tgtd_iops, ratio}}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import repo_root  # noqa: F401  (before tools: puts the repository root on sys.path)
from tools.peers import Tgtd, iscsi_perf
from tools.serve import EarmarkServe

LUN_BYTES = 256 << 20
BLOCK = 512  # both targets' block size
CASES = {
    # name: (bytes per I/O, queue depth, random)
    "randread_4k_qd32": (4096, 32, True),
    "randread_4k_qd1": (4096, 1, True),
    "seqread_1m_qd8": (1 << 20, 8, False),
}
GOALS = {"randread_4k_qd32": 0.5, "randread_4k_qd1": 0.7, "seqread_1m_qd8": 0.8}


def make_lun(path: Path) -> None:
    """Fill the LUN with incompressible data, so every read really moves bytes."""
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(LUN_BYTES >> 20):
            # A different first block per MiB: no two MiB alike, still cheap to make.
            f.write(i.to_bytes(8, "little") + chunk[8:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per run (default 5)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per target and workload; the best counts (default 3)")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="earmark serve's event loop (auto: uvloop if installed)")
    args = parser.parse_args()
    result: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="earmark-perf-") as tmp:
        lun = Path(tmp) / "lun.img"
        make_lun(lun)
        with Tgtd(lun) as tgtd, EarmarkServe(lun, "--loop", args.loop) as ours:
            ours_url, theirs_url = ours.url, tgtd.url()
            for name, (nbytes, qd, random) in CASES.items():
                best = {"earmark": 0, "tgtd": 0}
                for _ in range(args.repeat):
                    for who, url in (("earmark", ours_url), ("tgtd", theirs_url)):
                        perf = iscsi_perf(url, blocks=nbytes // BLOCK, queue_depth=qd,
                                          random=random, seconds=args.seconds)
                        best[who] = max(best[who], perf.iops)
                ratio = best["earmark"] / best["tgtd"] if best["tgtd"] else 0.0
                result[name] = {"earmark_iops": best["earmark"], "tgtd_iops": best["tgtd"],
                                "ratio": round(ratio, 3)}
                mark = "ok" if ratio >= GOALS[name] else f"below goal {GOALS[name]}"
                print(f"{name:18} earmark {best['earmark']:>8,} IOPS   "
                      f"tgtd {best['tgtd']:>8,} IOPS   ratio {ratio:5.2f}  ({mark})",
                      flush=True)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
