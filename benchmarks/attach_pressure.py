"""`earmark attach` under the real kernel's memory pressure: reserve against none, per cgroup limit.

ext4 on `earmark attach --loop` of an `earmark serve` LUN; a writer dirtying FILES files
of MIB MiB (fsync after each) faster than the target drains them; the writer and the
daemon in one cgroup v1 memory group of each ``--limits`` size. Under ``reserve`` the
daemon serves from buffers reserved and locked before the mount; under ``none`` it
allocates one per request (``tools/pressure.py`` says how each run is judged and
recovered). Every run then checks the filesystem (fsck) and every fsync'd file through
a new attach outside the cgroup.

    python benchmarks/attach_pressure.py [--json] [--limits 48,40,32] [--runs 2]

With --json the last line is one JSON object: {"runs": [PressureResult, ...]}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import repo_root  # noqa: F401  (before tools: puts the repository root on sys.path)
from tools.pressure import pressure_run

#: A small daemon, so the limits that matter are small: 2 MiB of initiator arena and
#: 8 requests in flight (8 x 256 KiB of request buffers).
ATTACH_OPTIONS = ("--memory", "2MiB", "--requests", "8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--limits", default="48,40,32", help="cgroup limits in MiB")
    parser.add_argument("--policies", default="reserve,none")
    parser.add_argument("--runs", type=int, default=2, help="runs per policy and limit")
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--mib", type=int, default=16, help="MiB per file")
    args = parser.parse_args()
    results = []
    for limit in (int(x) for x in args.limits.split(",")):
        for _ in range(args.runs):
            for policy in args.policies.split(","):
                with tempfile.TemporaryDirectory(prefix="earmark-pressure-") as tmp:
                    r = pressure_run(policy, Path(tmp), limit=limit << 20, files=args.files,
                                     mib=args.mib, options=ATTACH_OPTIONS)
                results.append(r.as_dict())
                print(f"{limit:4} MiB {policy:8} {r.outcome:60} "
                      f"{r.files_synced:3}/{r.files_planned} files {r.seconds:6.1f} s "
                      f"{r.mbps:6.1f} MB/s  fsck "
                      f"{'clean' if r.fsck_clean else 'ERRORS'}  lost {r.lost_files}", flush=True)
                if r.daemon_stack:
                    print(f"         daemon waited in: {r.daemon_stack}", flush=True)
    if args.json:
        print(json.dumps({"runs": results}))


if __name__ == "__main__":
    main()
