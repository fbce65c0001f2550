"""libiscsi's conformance suite against `earmark serve` and against tgtd, same run.

Both targets serve a scratch LUN of the same size; `iscsi-test-cu --dataloss -t
TESTS URL SECOND-URL` runs against each in turn, and its verdicts are counted honestly
(a test that printed [SKIPPED] is skipped, not passed: see `peers.ConformanceResult`).
Each target is given what the suite's groups need: a second path to the LUN for
MultipathIO (earmark: a second portal, `--portal`; tgtd has one portal, so its second
URL is the first again), and a read-only LUN for ReadOnly, in a second, short run of
that suite alone (`--readonly`; tgtd: `readonly=1`) whose verdicts replace the first
run's. Both are given --allow-sanitize: the LUNs are scratch files, and a target
without SANITIZE says so in REPORT SUPPORTED OPERATION CODES, where the suite looks.
Both serve the LUN as a removable medium (earmark: `--removable`; tgtd: `removable=1`),
which the PreventAllow and StartStopUnit suites need.
earmark runs as a user starts it, `python -m earmark.cli serve FILE --port P`,
and must stop cleanly on SIGINT: a target that hangs or crashes under the suite
fails the benchmark. The summary lists, test by test, what tgtd passes and
earmark does not (and the reverse), since the counts alone hide trades.

    python benchmarks/conformance.py [--json] [--size 64MiB] [--tests ALL]

With --json the last line is
{"earmark": {"passed": P, "failed": F, "skipped": S, "crashed": false}, "tgtd": {...}}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import repo_root  # noqa: F401  (before tools: puts the repository root on sys.path)
from earmark.units import SizeError, parse_size
from tools.peers import ConformanceResult, Tgtd, free_port, iscsi_test_cu

#: How long `earmark serve` may take to listen, and to exit after SIGINT.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0
#: The suite that needs a read-only LUN (it skips on a writable one).
READ_ONLY_SUITE = "ALL.ReadOnly"


class ServeError(RuntimeError):
    """`earmark serve` did not start, or did not stop as it should."""


def run_earmark(size: int, tests: str, workdir: Path) -> tuple[ConformanceResult, str]:
    """Run the suite against a fresh `earmark serve` with two portals (and the read-only
    suite against a read-only one); also return how they stopped."""
    result, stopped = _earmark_run(size, tests, workdir, "earmark", "--removable")
    if not _selects(tests, READ_ONLY_SUITE):
        return result, stopped
    read_only, stopped_ro = _earmark_run(size, READ_ONLY_SUITE, workdir, "earmark-ro",
                                         "--readonly", "--removable")
    return merged(result, read_only), stopped if stopped_ro == "exit 0" else stopped_ro


def _earmark_run(size: int, tests: str, workdir: Path, name: str,
                 *options: str) -> tuple[ConformanceResult, str]:
    image = workdir / f"{name}.img"
    if not image.exists():  # --readonly serves the file as it is: create it first
        with open(image, "wb") as f:
            f.truncate(size)
    argv = [sys.executable, "-m", "earmark.cli", "serve", str(image), "--port",
            str(free_port()), "--portal", "127.0.0.1:0", *options]
    log_path = workdir / f"{name}-serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            second, url = _wait_for_urls(proc, log_path)
            result = iscsi_test_cu(url, tests=tests, dataloss=True, allow_sanitize=True,
                                   second_url=second)
        finally:
            stopped = _stop(proc)
    return result, stopped


def _wait_for_urls(proc: subprocess.Popen[str], log_path: Path) -> tuple[str, str]:
    """The LUN's URL through the second portal and through the first, from the lines
    `earmark serve` prints once it listens ("also listening on HOST:PORT", then the URL)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    second = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("also listening on "):
            second = line.split()[-1]
        if line.startswith("iscsi://") and second:
            url = line.strip()
            return url.replace(url.split("/")[2], second, 1), url
        if not line and proc.poll() is not None:
            break
    raise ServeError(f"earmark serve did not print its URLs within {START_TIMEOUT:g} s; "
                     f"its log ({log_path}) says: {log_path.read_text().strip()[-500:]}")


def _selects(tests: str, suite: str) -> bool:
    """Whether the selection FAMILY[.SUITE[.TEST]] `tests` runs (part of) `suite`, whose
    tests are in the ALL and SCSI families."""
    return tests in ("ALL", "SCSI") or f".{suite.split('.')[-1]}" in tests


def merged(main: ConformanceResult, extra: ConformanceResult) -> ConformanceResult:
    """`main` with the verdicts of `extra` (a run of some of its tests, set up for them)
    in place of its own, counted again."""
    outcomes = {**main.outcomes, **extra.outcomes}
    verdicts = [o.outcome for o in outcomes.values()]
    return dataclasses.replace(
        main, outcomes=outcomes, passed=verdicts.count("passed"),
        failed=verdicts.count("failed"), skipped=verdicts.count("skipped"),
        crashed=main.crashed or extra.crashed,
        crash_reason=main.crash_reason or extra.crash_reason,
        elapsed=main.elapsed + extra.elapsed)


def _stop(proc: subprocess.Popen[str]) -> str:
    """SIGINT, then wait: "exit 0" is the only good answer."""
    if proc.poll() is not None:
        return f"had already exited with status {proc.returncode}"
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return f"did not exit within {STOP_TIMEOUT:g} s of SIGINT (killed)"
    return "exit 0" if code == 0 else f"exit status {code}"


def run_tgtd(size: int, tests: str) -> ConformanceResult:
    with Tgtd(size) as tgtd:
        url = tgtd.url()
        tgtd.tgtadm("--lld", "iscsi", "--op", "update", "--mode", "logicalunit", "--tid", "1",
                    "--lun", "1", "--params", "removable=1")
        result = iscsi_test_cu(url, tests=tests, dataloss=True, allow_sanitize=True,
                               second_url=url)
        if not _selects(tests, READ_ONLY_SUITE):
            return result
        tgtd.tgtadm("--lld", "iscsi", "--op", "update", "--mode", "logicalunit", "--tid", "1",
                    "--lun", "1", "--params", "readonly=1")
        read_only = iscsi_test_cu(url, tests=READ_ONLY_SUITE, dataloss=True,
                                  allow_sanitize=True, second_url=url)
    return merged(result, read_only)


def counts(result: ConformanceResult, crashed: bool) -> dict[str, int | bool]:
    return {"passed": result.passed, "failed": result.failed, "skipped": result.skipped,
            "crashed": crashed}


def differences(ours: ConformanceResult, theirs: ConformanceResult) -> list[str]:
    lines = []
    for name, mine in ours.outcomes.items():
        other = theirs.outcomes.get(name)
        if other is None or other.outcome == mine.outcome:
            continue
        if "passed" not in (mine.outcome, other.outcome):
            continue
        # The loser's notes say why; the winner's are often its expected-error log.
        why = (other.detail if mine.outcome == "passed" else mine.detail).splitlines()
        lines.append(f"  {name:45s} earmark {mine.outcome:8s} tgtd {other.outcome:8s} "
                     f"{why[0][:70] if why else ''}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--size", default="64MiB", help="LUN size for both targets (64MiB)")
    parser.add_argument("--tests", default="ALL",
                        help="iscsi-test-cu test selection, FAMILY[.SUITE[.TEST]] (ALL)")
    args = parser.parse_args()
    try:
        size = parse_size(args.size, "--size")
    except SizeError as exc:
        parser.error(str(exc))
    if size % 512:
        parser.error(f"--size {args.size} is not a whole number of 512-byte blocks")
    with tempfile.TemporaryDirectory(prefix="earmark-conformance-") as tmp:
        try:
            ours, stopped = run_earmark(size, args.tests, Path(tmp))
        except ServeError as exc:
            print(f"conformance: {exc}", file=sys.stderr)
            return 1
        theirs = run_tgtd(size, args.tests)
    # Crashing includes not stopping cleanly: a target that hangs at SIGINT is broken.
    ours_crashed = ours.crashed or stopped != "exit 0"
    for name, res, crashed in (("earmark", ours, ours_crashed), ("tgtd", theirs, theirs.crashed)):
        print(f"{name:8s} passed {res.passed:3d}  failed {res.failed:3d}  skipped "
              f"{res.skipped:3d}  crashed {crashed}  ({res.elapsed:.0f} s)")
        if res.crash_reason:
            print(f"         crash: {res.crash_reason}")
    print(f"earmark serve after SIGINT: {stopped}")
    for name in ours.names("failed"):
        detail = ours.outcomes[name].detail.splitlines()
        print(f"  earmark FAILED {name}: {detail[0] if detail else ''}")
    diff = differences(ours, theirs)
    if diff:
        print("where the two differ (one of them passed):")
        print("\n".join(diff))
    gap = ours.passed - theirs.passed
    print(f"earmark passes {abs(gap)} {'more' if gap >= 0 else 'fewer'} tests than tgtd")
    if args.json:
        print(json.dumps({"earmark": counts(ours, ours_crashed),
                          "tgtd": counts(theirs, theirs.crashed)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
