"""`earmark attach` against the FUSE ceiling (bindfs over the same LUN file), with fio, in one run.

fio (Debian's) with ``--ioengine=psync --direct=1``: 4 KiB random reads and writes at queue
depth 1, and 64 KiB sequential reads and writes, on MOUNTPOINT/disk of an `earmark attach`
of an `earmark serve` LUN, and on that LUN's image file through a bindfs passthrough mount:
FUSE with no network and no iSCSI, what any FUSE daemon on this machine can reach at best.
The LUN is filled with real data first (``target_perf.make_lun``). A third column is the
same I/O by earmark's asyncio initiator alone (`earmark bench --engine async --qd 1`, in
this process): what `earmark attach` costs above the initiator it is carried by. Runs
alternate earmark, bindfs, initiator, earmark, ... so a neighbour's burst on a shared
machine hits all; the best of ``--repeat`` runs counts for each. Goal: 4 KiB QD1 reads and
writes at >= 0.5 of bindfs. `earmark attach` runs as a user starts it (its loop polls
while a request waits for the target); with ``--poll US`` a fourth side, `earmark attach
--poll US` (``--poll 0``: never polling), is measured in the same turns.

    python benchmarks/attach_perf.py [--json] [--seconds 5] [--repeat 3] [--poll 0]

With --json the last line is one JSON object: {case: {earmark_iops, bindfs_iops, ratio,
initiator_iops, of_initiator}}, and with --poll also poll_iops and poll_ratio (of bindfs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import earmark.cli.loops as loops
import repo_root  # noqa: F401  (before tools: puts the repository root on sys.path)
from earmark.sim.bench import run_bench
from target_perf import LUN_BYTES, make_lun
from tools.attach import EarmarkAttach, is_mounted, run
from tools.serve import EarmarkServe

CASES = {
    # name: (fio --rw, bytes per I/O)
    "randread_4k_qd1": ("randread", 4096),
    "randwrite_4k_qd1": ("randwrite", 4096),
    "read_64k_qd1": ("read", 64 << 10),
    "write_64k_qd1": ("write", 64 << 10),
}
GOALS = {"randread_4k_qd1": 0.5, "randwrite_4k_qd1": 0.5}


def initiator_iops(url: str, rw: str, nbytes: int, seconds: int) -> int:
    result = loops.run(run_bench(url, rw=rw, bs=nbytes, qd=1, seconds=seconds), loops.loop_name())
    return round(result.iops)


def fio_iops(path: Path, rw: str, nbytes: int, seconds: int) -> int:
    out = run("fio", "--name=attach", f"--filename={path}", f"--rw={rw}", f"--bs={nbytes}",
              "--ioengine=psync", "--iodepth=1", "--direct=1", "--time_based",
              f"--runtime={seconds}", f"--size={LUN_BYTES}", "--output-format=json")
    job = json.loads(out)["jobs"][0]
    iops: float = job["read"]["iops"] + job["write"]["iops"]
    return round(iops)


@contextmanager
def bindfs(source: Path, mountpoint: Path) -> Iterator[Path]:
    mountpoint.mkdir()
    run("bindfs", source, mountpoint)
    try:
        yield mountpoint
    finally:
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)


@contextmanager
def polled(poll: int | None, url: str, mountpoint: Path) -> Iterator[EarmarkAttach | None]:
    """`earmark attach --poll POLL` of the same LUN, or None when ``poll`` is None."""
    if poll is None:
        yield None
        return
    with EarmarkAttach(url, mountpoint, "--poll", str(poll)) as attached:
        yield attached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per run (default 5)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per side and workload; the best counts (default 3)")
    parser.add_argument("--poll", type=int, default=None, metavar="US",
                        help="also measure earmark attach --poll US (0: never polling)")
    args = parser.parse_args()
    result: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="earmark-attach-perf-") as tmp:
        root = Path(tmp)
        (root / "lun").mkdir()
        lun = root / "lun" / "lun.img"
        make_lun(lun)
        with EarmarkServe(lun) as target, \
                EarmarkAttach(target.url, root / "attach") as attached, \
                bindfs(lun.parent, root / "bindfs") as passthrough, \
                polled(args.poll, target.url, root / "polled") as polling:
            sides: dict[str, Callable[[str, int], int]] = {
                "earmark": lambda rw, n: fio_iops(attached.disk, rw, n, args.seconds),
                "bindfs": lambda rw, n: fio_iops(passthrough / lun.name, rw, n, args.seconds),
                "initiator": lambda rw, n: initiator_iops(target.url, rw, n, args.seconds),
            }
            if polling is not None:
                disk = polling.disk
                sides["poll"] = lambda rw, n: fio_iops(disk, rw, n, args.seconds)
            for name, (rw, nbytes) in CASES.items():
                best = dict.fromkeys(sides, 0)
                for _ in range(args.repeat):
                    for who, measure in sides.items():
                        best[who] = max(best[who], measure(rw, nbytes))
                ratio = best["earmark"] / best["bindfs"] if best["bindfs"] else 0.0
                of_initiator = best["earmark"] / best["initiator"] if best["initiator"] else 0.0
                row = result[name] = {
                    "earmark_iops": best["earmark"], "bindfs_iops": best["bindfs"],
                    "ratio": round(ratio, 3), "initiator_iops": best["initiator"],
                    "of_initiator": round(of_initiator, 3)}
                goal = GOALS.get(name)
                mark = "" if goal is None else "  (ok)" if ratio >= goal else \
                    f"  (below goal {goal})"
                also = ""
                if "poll" in best:
                    row["poll_iops"] = best["poll"]
                    row["poll_ratio"] = round(best["poll"] / best["bindfs"], 3) \
                        if best["bindfs"] else 0.0
                    also = (f"   --poll {args.poll}: {best['poll']:>7,} "
                            f"(ratio {row['poll_ratio']:4.2f})")
                print(f"{name:18} earmark {best['earmark']:>7,} IOPS  bindfs "
                      f"{best['bindfs']:>7,}  ratio {ratio:5.2f}{mark}   initiator alone "
                      f"{best['initiator']:>7,} (earmark attach: {of_initiator:4.2f} of it)"
                      f"{also}", flush=True)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
