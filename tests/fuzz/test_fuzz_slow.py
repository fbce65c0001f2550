"""The fuzzers themselves (atheris, installed into .venv by the runner): every harness
for a million executions, none of which may crash or hang. `slow`: tens of minutes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.harnesses import HARNESSES

RUNS = 1_000_000
FUZZ = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz.py"


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_every_harness_runs_a_million_inputs_without_a_crash() -> None:
    done = subprocess.run([sys.executable, str(FUZZ), "--runs", str(RUNS), "--jobs", "2",
                           "--json"], capture_output=True, text=True, check=True)
    results = json.loads(done.stdout.splitlines()[-1])["harnesses"]
    assert sorted(results) == sorted(HARNESSES)
    for name, result in results.items():
        assert result["crashes"] == 0, (name, result, "see tests/fuzz/crashes/")
        assert result["executions"] >= RUNS, (name, result)
