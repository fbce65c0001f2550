"""`earmark serve` against tgtd, reads and writes, and each target's peak memory, in one run.

Reads, measured by libiscsi's `iscsi-perf`: 4 KiB random at queue depth 32 and 1, 1 MiB
sequential at queue depth 8. Writes, measured by earmark's own initiator (`earmark bench
--engine auto`: its blocking engine at queue depth 1, asyncio above; iscsi-perf only
reads), the same initiator for both targets: 4 KiB random at queue depth 32 and 1, 64 KiB
random at 32, 1 MiB sequential at 8. Both targets serve the same LUN file, filled with
real data first (a sparse file would let both skip the page cache's copy of zeros); the
reads run first, since the writes overwrite it. Both are started once and stay up; the
runs alternate earmark, tgtd, earmark, ... so a neighbour's burst on a shared machine
hits both, and the best of ``--repeat`` runs counts for each. Only one target is driven
at a time: the other sits idle with its session closed. Goals: read ratio >= 1.0 at QD32
and 1 MiB, >= 0.9 at QD1; every write ratio >= 1.0.

earmark serve runs as a user starts it (its defaults, uvloop when installed), so it polls
its loop for 250 us after each command (`--poll`, earmark.busy_poll); ``--poll 0`` here
measures it sleeping at once instead. The JSON says which it was (``earmark_poll_us``).

Memory: each target's peak resident set (VmHWM), read once every workload has run and
before the targets stop; goal: earmark serve's at most its arena (as it reports it)
+ 32 MiB.

    python benchmarks/target_perf.py [--json] [--seconds 5] [--repeat 3] [--loop auto]
                                     [--poll US]

With --json the last line is one JSON object: {case: {earmark_iops, tgtd_iops, ratio},
..., "rss": {earmark_peak_bytes, earmark_arena_bytes, tgtd_peak_bytes},
"earmark_poll_us"}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import repo_root  # noqa: F401  (before tools: puts the repository root on sys.path)
from earmark.cli.serve import POLL_US
from tools.peers import Tgtd, iscsi_perf
from tools.serve import EarmarkServe

LUN_BYTES = 256 << 20
BLOCK = 512  # both targets' block size
READS = {
    # name: (bytes per I/O, queue depth, random)
    "randread_4k_qd32": (4096, 32, True),
    "randread_4k_qd1": (4096, 1, True),
    "seqread_1m_qd8": (1 << 20, 8, False),
}
WRITES = {
    # name: (earmark bench --rw, bytes per I/O, queue depth)
    "randwrite_4k_qd32": ("randwrite", 4096, 32),
    "randwrite_4k_qd1": ("randwrite", 4096, 1),
    "randwrite_64k_qd32": ("randwrite", 64 << 10, 32),
    "write_1m_qd8": ("write", 1 << 20, 8),
}
#: Issue 11's goals: at least tgtd's speed, but reads at QD1 within 0.9 of it.
GOALS = {"randread_4k_qd32": 1.0, "randread_4k_qd1": 0.9, "seqread_1m_qd8": 1.0,
         **dict.fromkeys(WRITES, 1.0)}
#: earmark serve's peak RSS may exceed its arena by this much (the interpreter, code, stacks).
RSS_SLACK = 32 << 20


def make_lun(path: Path) -> None:
    """Fill the LUN with incompressible data, so every read really moves bytes, and sync
    it: its blocks are then allocated, as a LUN's are after its first day. Unsynced, ext4
    allocates them lazily (delalloc), and each overwrite of such a block costs the writer
    ~25-30 us of CPU on this machine (of an allocated block: 2-7 us) until the
    flusher gets to it, mid-benchmark."""
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(LUN_BYTES >> 20):
            # A different first block per MiB: no two MiB alike, still cheap to make.
            f.write(i.to_bytes(8, "little") + chunk[8:])
        f.flush()
        os.fsync(f.fileno())


def read_iops(case: str, url: str, seconds: int) -> int:
    nbytes, qd, random = READS[case]
    return iscsi_perf(url, blocks=nbytes // BLOCK, queue_depth=qd, random=random,
                      seconds=seconds).iops


def write_iops(case: str, url: str, seconds: int) -> int:
    rw, nbytes, qd = WRITES[case]
    argv = [sys.executable, "-m", "earmark.cli", "bench", url, "--rw", rw, "--bs", str(nbytes),
            "--qd", str(qd), "--time", str(seconds), "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {done.returncode}: "
                         f"{done.stderr.strip()}")
    iops: float = json.loads(done.stdout.splitlines()[-1])["iops"]
    return round(iops)


def peak_rss(pid: int) -> int:
    """VmHWM: the most the process has held resident since it started, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10  # kB
    raise SystemExit(f"/proc/{pid}/status has no VmHWM line")


def mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per run (default 5)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per target and workload; the best counts (default 3)")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="earmark serve's event loop (auto: uvloop if installed)")
    parser.add_argument("--poll", type=int, default=POLL_US, metavar="US",
                        help=f"earmark serve --poll (default {POLL_US}, its own default)")
    args = parser.parse_args()
    result: dict[str, Mapping[str, float] | int] = {}
    measure: list[tuple[str, Callable[[str, str, int], int]]] = [
        *((case, read_iops) for case in READS), *((case, write_iops) for case in WRITES)]
    with tempfile.TemporaryDirectory(prefix="earmark-perf-") as tmp:
        lun = Path(tmp) / "lun.img"
        make_lun(lun)
        with Tgtd(lun) as tgtd, EarmarkServe(lun, "--loop", args.loop,
                                                        "--poll", str(args.poll)) as ours:
            urls = {"earmark": ours.url, "tgtd": tgtd.url()}
            for name, run in measure:  # reads first: the writes overwrite the LUN
                best = {"earmark": 0, "tgtd": 0}
                for _ in range(args.repeat):
                    for who, url in urls.items():
                        best[who] = max(best[who], run(name, url, args.seconds))
                ratio = best["earmark"] / best["tgtd"] if best["tgtd"] else 0.0
                result[name] = {"earmark_iops": best["earmark"], "tgtd_iops": best["tgtd"],
                                "ratio": round(ratio, 3)}
                mark = "ok" if ratio >= GOALS[name] else f"below goal {GOALS[name]}"
                print(f"{name:18} earmark {best['earmark']:>8,} IOPS   "
                      f"tgtd {best['tgtd']:>8,} IOPS   ratio {ratio:5.2f}  ({mark})",
                      flush=True)
            assert tgtd.pid is not None
            rss = {"earmark_peak_bytes": peak_rss(ours.pid),
                   "earmark_arena_bytes": ours.arena_bytes,
                   "tgtd_peak_bytes": peak_rss(tgtd.pid)}
    result["rss"] = rss
    result["earmark_poll_us"] = args.poll
    peak, limit = rss["earmark_peak_bytes"], rss["earmark_arena_bytes"] + RSS_SLACK
    mark = "ok" if peak <= limit else f"over by {mib(peak - limit)}"
    print(f"{'peak RSS':18} earmark {mib(peak):>12}   tgtd {mib(rss['tgtd_peak_bytes']):>12}   "
          f"(goal: earmark <= arena {mib(rss['earmark_arena_bytes'])} + {mib(RSS_SLACK)}: "
          f"{mark})", flush=True)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
