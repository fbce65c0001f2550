"""Fuzz every harness of tests/fuzz/ with atheris (libFuzzer), each in its own process.

    .venv/bin/python benchmarks/fuzz.py --runs 1000000 --json     # every harness
    .venv/bin/python benchmarks/fuzz.py --harness session --runs 100000 --save

atheris (pyproject.toml's `fuzz` extra) is installed into .venv first if it is not
there. A harness starts from its saved corpus (tests/fuzz/corpus/<name>/) and the
crashes kept (tests/fuzz/crashes/<name>/); what it finds new goes to a scratch
directory, and `--save` merges it into the saved corpus, minimised (libFuzzer's
-set_cover_merge=1: a small set of inputs with the same coverage). A crash (an uncaught
exception, a broken invariant) or a hang (an input running longer than --timeout) is
copied to the crashes directory, so the default suite replays it from then on. Per
harness: the executions libFuzzer reports, the crashes and the rate; with --json the
last line is
`{"harnesses": {"<name>": {"executions", "crashes", "seconds", "per_second"}}}`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import repo_root  # first: puts the repository root on sys.path, for tests.fuzz
from tests.fuzz.harnesses import HARNESSES, corpus_dir, crashes_dir, module_name

ROOT = repo_root.ROOT
_EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_SELF = "EARMARK_FUZZ_SELF"
_ARTIFACTS = ("crash-", "timeout-", "oom-", "leak-")


def ensure_atheris(python: str) -> None:
    """Install the `fuzz` extra's requirements into .venv, as scripts/setup does the rest."""
    probe = subprocess.run([python, "-c", "import atheris"], capture_output=True)
    if probe.returncode == 0:
        return
    with open(ROOT / "pyproject.toml", "rb") as f:
        wanted = tomllib.load(f)["project"]["optional-dependencies"]["fuzz"]
    print(f"installing {' '.join(wanted)} into .venv (pip)", file=sys.stderr)
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *wanted], check=True)


def child(name: str, libfuzzer_args: list[str]) -> None:
    """Runs in the fuzzing process: the harness imported under instrumentation."""
    atheris = importlib.import_module("atheris")  # the `fuzz` extra; untyped
    with atheris.instrument_imports(include=["earmark", "tests"]):
        module = importlib.import_module(module_name(name))
    # libFuzzer's -merge runs argv[0] again with its own flags: the wrapper script.
    atheris.Setup([os.environ[_SELF], *libfuzzer_args], module.one_input)
    atheris.Fuzz()


def _spawn(python: str, name: str, args: list[str], log: Path) -> int:
    wrapper = log.parent / "run"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(python)} {shlex.quote(__file__)} '
                       f'--child {name} -- "$@"\n')
    wrapper.chmod(0o755)
    with log.open("w") as out:
        return subprocess.run([str(wrapper), *args], cwd=ROOT, stdout=out,
                              stderr=subprocess.STDOUT, env={**os.environ, _SELF: str(wrapper)},
                              ).returncode


def fuzz(python: str, name: str, runs: int, timeout: int, save: bool,
         scratch: Path) -> dict[str, object]:
    work, artifacts = scratch / name / "new", scratch / name / "artifacts"
    work.mkdir(parents=True)
    artifacts.mkdir()
    seeds = [str(d) for d in (corpus_dir(name), crashes_dir(name)) if d.is_dir()]
    log = scratch / name / "fuzz.log"
    started = time.monotonic()
    status = _spawn(python, name, [
        str(work), *seeds, f"-runs={runs}", f"-timeout={timeout}",
        f"-max_len={HARNESSES[name]}", f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1", "-rss_limit_mb=4096",
    ], log)
    seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    executed = [int(n) for n in _EXECUTED.findall(text)]
    found = sorted(p for p in artifacts.iterdir() if p.name.startswith(_ARTIFACTS))
    if found:
        crashes_dir(name).mkdir(parents=True, exist_ok=True)
        for path in found:
            shutil.copy(path, crashes_dir(name) / path.name)
    elif status != 0:
        raise SystemExit(f"{name}: the fuzzer exited {status} without an artifact; see {log}:\n"
                         + text[-2000:])
    if save and not found:
        merged = scratch / name / "merged"
        merged.mkdir()
        corpus = corpus_dir(name)
        corpus.mkdir(parents=True, exist_ok=True)
        log = scratch / name / "merge.log"
        if _spawn(python, name, ["-set_cover_merge=1", f"-max_len={HARNESSES[name]}",
                                 str(merged), str(corpus), str(work)], log):
            raise SystemExit(f"{name}: the merge failed; see {log}:\n"
                             + log.read_text(errors="replace")[-2000:])
        shutil.rmtree(corpus)
        shutil.copytree(merged, corpus)
    return {"executions": executed[-1] if executed else 0, "crashes": len(found),
            "seconds": round(seconds, 1),
            "per_second": round(executed[-1] / seconds) if executed else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="executions per harness")
    parser.add_argument("--harness", action="append", choices=sorted(HARNESSES),
                        help="only this one (repeatable); default: every harness")
    parser.add_argument("--jobs", type=int, default=1, help="harnesses fuzzed at once")
    parser.add_argument("--timeout", type=int, default=10,
                        help="seconds one input may run before it counts as a hang")
    parser.add_argument("--save", action="store_true",
                        help="merge what was found into tests/fuzz/corpus/, minimised")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("libfuzzer", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.libfuzzer)
        return
    python = str(ROOT / ".venv" / "bin" / "python")
    if not Path(python).exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "setup")], check=True)
    ensure_atheris(python)
    names = args.harness or sorted(HARNESSES)
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="earmark-fuzz-") as tmp, \
            ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        jobs = {name: pool.submit(fuzz, python, name, args.runs, args.timeout, args.save,
                                  Path(tmp)) for name in names}
        for name, job in jobs.items():
            result = results[name] = job.result()
            print(f"{name}: {result['executions']} executions, {result['crashes']} crashes, "
                  f"{result['seconds']} s ({result['per_second']}/s)", flush=True)
    if args.json:
        print(json.dumps({"harnesses": results}))


if __name__ == "__main__":
    main()
