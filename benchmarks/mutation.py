"""Mutation score of the memory discipline's code: memory/, host/ and the target's admission.

A slow job, outside the test suite. For each package mutmut (3.x) changes the code one
small edit at a time (a `<` for a `<=`, a constant, a dropped call) and runs that
package's own fast tests against each mutant; a mutant no test notices is a rule no test
pins down. mutmut rather than cosmic-ray: it builds every mutant into one copy of the
source (a trampoline per function), forks per mutant with pytest already loaded, and
runs only the tests that call the mutated function, so a mutant costs a fork and a few
tests instead of a fresh pytest process and the whole selection; with the `src/` layout
it needs no configuration beyond what this script writes.

Each package runs in a scratch copy of the tree (`--workdir`, a temporary one by
default), so nothing of mutmut's lands in the work tree; keep one with `--workdir DIR`
to read a mutant there (`cd DIR/memory && ../../.venv/bin/mutmut show NAME`).

    python benchmarks/mutation.py [--json] [--jobs 2] [--packages memory,host,admission]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
MUTMUT = VENV / "bin" / "mutmut"

#: The session's admission by reservation: its window, slots and their buffers
#: (docs/architecture.md, "where each rule lives"), what a connection holds for its
#: life, and each session's fair share of slots.
ADMISSION = [
    f"earmark.target.session.xǁTargetSessionǁ{name}__mutmut_*"
    for name in ("__init__", "slot_demand", "add_slot", "close", "_in_window", "_advance",
                 "_command", "_window_size", "_first_window", "_release", "_return_slot")
] + [
    "earmark.target.connection_core.xǁConnectionMemoryǁ*",
] + [
    f"earmark.target.portal.xǁTargetPortalǁ{name}__mutmut_*"
    for name in ("__init__", "connection_closed", "session_started", "fair_share", "_share")
]


@dataclass(frozen=True)
class Package:
    """What to mutate, which mutants count (mutmut name globs; empty: all of them) and
    the folder of tests that judge them (its tests that are neither slow nor on sockets:
    each mutant runs only those of them that call the function it changed)."""

    files: list[str]
    tests: str
    mutants: list[str] = field(default_factory=list)


PACKAGES = {
    "memory": Package(["src/earmark/memory/*"], "tests/memory"),
    "host": Package(["src/earmark/host/*"], "tests/host"),
    "admission": Package(
        ["src/earmark/target/session.py", "src/earmark/target/connection_core.py",
         "src/earmark/target/portal.py"],
        "tests/target",
        ADMISSION,
    ),
}

#: How mutmut's verdicts count: a hang (timeout) or a crash is noticed as surely as a
#: failed assert. "no tests": no selected test calls the function.
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
UNCHECKED = {"not checked", "skipped"}

#: Per mutant: its tests' clean time plus 2 s, times 4, of CPU before SIGXCPU (a busy
#: loop), and 20 s of wall time per test (pytest-timeout: a wait that never ends).
#: mutmut's defaults (x30 CPU, and the suite's 120 s) made a few hung mutants cost more
#: than every other mutant together.
MUTMUT_CONFIG = {
    "source_paths": ["src"],
    "also_copy": ["tools/"],
    "timeout_multiplier": 2.0,
    "timeout_constant": 2.0,
    "pytest_add_cli_args": ["-p", "no:cacheprovider", "--timeout=20", "--hypothesis-seed=0"],
}


def toml_value(value: object) -> str:
    # JSON strings, numbers and arrays of them are TOML too.
    return json.dumps(value)


def mutmut_section(package: Package) -> str:
    config: dict[str, object] = {
        **MUTMUT_CONFIG,
        "only_mutate": package.files,
        "pytest_add_cli_args_test_selection": ["-m", "not slow and not tcp", package.tests],
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {toml_value(v)}" for k, v in config.items()]
    return "\n".join(lines) + "\n"


def ensure_mutmut() -> None:
    """mutmut lives in the `mutation` extra of the work tree's .venv (scripts/setup makes it)."""
    if MUTMUT.exists():
        return
    subprocess.run(["bash", str(ROOT / "scripts" / "setup")], check=True)
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", "-e", ".[mutation]"], cwd=ROOT, check=True)


def prepare(workdir: Path, package: Package) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for name in ("src", "tests", "tools"):
        shutil.copytree(ROOT / name, workdir / name,
                        ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
    pyproject = (ROOT / "pyproject.toml").read_text()
    (workdir / "pyproject.toml").write_text(pyproject + mutmut_section(package))


def run_package(workdir: Path, package: Package, jobs: int, log: Path) -> dict[str, str]:
    """Run mutmut on one package; every counted mutant's verdict by name."""
    prepare(workdir, package)
    with log.open("w") as out:
        done = subprocess.run([str(MUTMUT), "run", "--max-children", str(jobs),
                               *package.mutants], cwd=workdir, stdout=out,
                              stderr=subprocess.STDOUT)
    if done.returncode:
        tail = log.read_text().replace("\r", "\n").splitlines()[-30:]
        sys.exit("\n".join([f"mutmut run failed ({done.returncode}) in {workdir}:", *tail]))
    listing = subprocess.run([str(MUTMUT), "results", "--all", "true"], cwd=workdir,
                             capture_output=True, text=True, check=True).stdout
    verdicts: dict[str, str] = {}
    for line in listing.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep or status in UNCHECKED:
            continue
        if package.mutants and not any(fnmatch.fnmatch(name, p) for p in package.mutants):
            continue
        verdicts[name] = status
    return verdicts


def summary(verdicts: dict[str, str], seconds: float) -> dict[str, object]:
    killed = [n for n, s in verdicts.items() if s in KILLED]
    return {
        "killed": len(killed),
        "total": len(verdicts),
        "score": round(len(killed) / len(verdicts), 3) if verdicts else None,
        "timeouts": sum(1 for s in verdicts.values() if s == "timeout"),
        "seconds": round(seconds),
        "survived": sorted(n for n, s in verdicts.items() if s not in KILLED and s != "no tests"),
        "no_tests": sorted(n for n, s in verdicts.items() if s == "no tests"),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once")
    parser.add_argument("--packages", default=",".join(PACKAGES),
                        help=f"comma-separated, of {', '.join(PACKAGES)}")
    parser.add_argument("--workdir", type=Path, help="keep the scratch copies here")
    args = parser.parse_args(argv)
    names = args.packages.split(",")
    unknown = [n for n in names if n not in PACKAGES]
    if unknown:
        parser.error(f"unknown package {', '.join(unknown)}")
    ensure_mutmut()
    with tempfile.TemporaryDirectory(prefix="earmark-mutation-") as scratch:
        base = args.workdir.resolve() if args.workdir else Path(scratch)
        results: dict[str, dict[str, object]] = {}
        for name in names:
            start = time.monotonic()
            verdicts = run_package(base / name, PACKAGES[name], args.jobs, base / f"{name}.log")
            results[name] = result = summary(verdicts, time.monotonic() - start)
            survived, no_tests = result["survived"], result["no_tests"]
            assert isinstance(survived, list) and isinstance(no_tests, list)
            print(f"{name}: {result['killed']} killed / {result['total']} mutants "
                  f"(score {result['score']}, {result['timeouts']} of them by timeout), "
                  f"{len(survived)} survived, {len(no_tests)} with no test, "
                  f"{result['seconds']} s", flush=True)
            for mutant in survived:
                print(f"  survived  {mutant}")
            for mutant in no_tests:
                print(f"  no test   {mutant}")
    if args.json:
        print(json.dumps({"packages": results}))


if __name__ == "__main__":
    main()
