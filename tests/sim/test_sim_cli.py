"""`earmark sim run` and `earmark sim sweep` as a user runs them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path


def _sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "earmark.cli", "sim", *args],
                          capture_output=True, text=True, timeout=600)


def test_run_replays_a_seed_with_its_trace_and_the_same_hash() -> None:
    first = _sim("run", "--seed", "7", "--trace-hash")
    assert first.returncode == 0, first.stderr
    shown = _sim("run", "--seed", "7", "--trace", "--json")
    assert shown.returncode == 0, shown.stderr
    last = json.loads(shown.stdout.strip().splitlines()[-1])
    assert last["outcome"]["trace_hash"] == first.stdout.strip()
    assert last["scenario"]["seed"] == 7 and last["outcome"]["violations"] == []
    assert " ms  link   1  " in shown.stderr  # the readable trace, one delivery a line
    assert _sim("run", "--seed", "8", "--trace-hash").stdout != first.stdout


def test_sweep_writes_its_grid_as_csv_and_png(tmp_path: Path) -> None:
    table, picture = tmp_path / "grid.csv", tmp_path / "grid.png"
    done = _sim("sweep", "--writers", "1,64", "--arenas", "2MiB", "--latencies", "0.0001",
                "--policies", "none,reserve", "--seeds", "1", "--workers", "2",
                "--csv", str(table), "--png", str(picture), "--json")
    assert done.returncode == 0, done.stderr
    with table.open() as f:
        rows = {(r["policy"], r["writers"]): r for r in csv.DictReader(f)}
    assert set(rows) == {("none", "1"), ("none", "64"), ("reserve", "1"), ("reserve", "64")}
    assert all(rows[("none", w)]["deadlock_rate"] == "1.0" for w in ("1", "64"))
    assert all(rows[("reserve", w)]["deadlock_rate"] == "0.0" for w in ("1", "64"))
    assert float(rows[("reserve", "64")]["mbps"]) > 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = json.loads(done.stdout.strip().splitlines()[-1])["cells"]
    assert len(cells) == 4


def test_a_mistake_is_one_line_and_status_2() -> None:
    done = _sim("swarm", "--policies", "bogus")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "'bogus' is not a valid Policy" in done.stderr


def test_a_swarm_counts_the_disk_errors_it_drew_and_does_not_print_each() -> None:
    done = _sim("swarm", "--seeds", "50", "--quick", "--policies", "reserve", "--json")
    assert done.returncode == 0, done.stderr
    (reserve,) = json.loads(done.stdout.strip().splitlines()[-1])["policies"]
    assert reserve["io_errors"] >= 1  # some of these seeds' disks did fail writes
    assert "simulated disk" not in done.stderr


def test_one_run_shows_its_targets_disk_errors() -> None:
    done = _sim("run", "--seed", "80")  # its disk fails writes (error_p 0.009)
    assert done.returncode == 0 and "io-error" in done.stdout
    assert "simulated disk: write failed" in done.stderr
