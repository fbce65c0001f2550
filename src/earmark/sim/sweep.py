"""`earmark sim sweep`: where each policy breaks, on a grid of writers x arena x latency.

Each cell runs a few seeds of one fixed configuration (no faults; the seed picks
the writers' pages and the schedule) and keeps the deadlock rate and the mean
virtual-time MB/s of the runs that completed. The grid goes to CSV and, drawn
with matplotlib, to a PNG: one row of panels per policy, one panel per latency,
writers across, arena up, colour the deadlock rate, the number MB/s.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from earmark.host.policy import Policy
from earmark.sim.links import LinkShape
from earmark.sim.scenario import Outcome, Scenario
from earmark.sim.schedule import Schedule

__all__ = ["Cell", "Grid", "cells", "draw_png", "write_csv"]

#: The link every cell shares but for its latency: a LAN's bandwidth, a modest window.
_LINK = LinkShape(bandwidth=1.25e9, window=256 << 10, sndbuf=64 << 10)


@dataclass(frozen=True, slots=True)
class Grid:
    writers: Sequence[int] = (1, 16, 256, 4096)
    arenas: Sequence[int] = (2 << 20, 4 << 20, 8 << 20)
    latencies: Sequence[float] = (50e-6, 500e-6, 5e-3)
    policies: Sequence[Policy] = tuple(Policy)
    seeds: int = 2
    total_pages: int = 2048

    def jobs(self) -> list[Scenario]:
        return [
            Scenario(seed=seed, policy=policy, writers=writers,
                     total_pages=max(writers, self.total_pages), arena_bytes=arena,
                     link=replace(_LINK, latency=latency, seed=seed), target_memory=64 << 20,
                     disk=None, schedule=Schedule.RANDOM)
            for policy in self.policies for latency in self.latencies
            for arena in self.arenas for writers in self.writers
            for seed in range(1, self.seeds + 1)
        ]


@dataclass(frozen=True, slots=True)
class Cell:
    policy: str
    writers: int
    arena_bytes: int
    latency_s: float
    runs: int
    deadlock_rate: float
    mbps: float | None
    violations: int

    def as_json(self) -> dict[str, object]:
        return {"policy": self.policy, "writers": self.writers, "arena_bytes": self.arena_bytes,
                "latency_s": self.latency_s, "runs": self.runs,
                "deadlock_rate": self.deadlock_rate,
                "mbps": None if self.mbps is None else round(self.mbps, 3),
                "violations": self.violations}


def cells(jobs: Sequence[Scenario], outcomes: Sequence[Outcome]) -> list[Cell]:
    """The outcomes of `jobs` (in the same order) gathered per cell."""
    groups: dict[tuple[str, int, int, float], list[Outcome]] = {}
    for job, outcome in zip(jobs, outcomes, strict=True):
        key = (job.policy.value, job.writers, job.arena_bytes, job.link.latency)
        groups.setdefault(key, []).append(outcome)
    out = []
    for (policy, writers, arena, latency), runs in groups.items():
        done = [o.mbps for o in runs if o.outcome == "completed"]
        out.append(Cell(policy, writers, arena, latency, len(runs),
                        sum(o.outcome == "deadlocked" for o in runs) / len(runs),
                        sum(done) / len(done) if done else None,
                        sum(o.failed for o in runs)))
    return out


def write_csv(grid: Iterable[Cell], path: Path) -> None:
    rows = [cell.as_json() for cell in grid]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def draw_png(grid: Sequence[Cell], path: Path) -> None:
    import matplotlib  # only the sweep draws: the rest of earmark does without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(dict.fromkeys(c.policy for c in grid))
    latencies = sorted({c.latency_s for c in grid})
    writers = sorted({c.writers for c in grid})
    arenas = sorted({c.arena_bytes for c in grid})
    fig, axes = plt.subplots(len(policies), len(latencies), squeeze=False, layout="constrained",
                             figsize=(1.2 + 3.0 * len(latencies), 0.6 + 2.3 * len(policies)))
    by_key = {(c.policy, c.latency_s, c.writers, c.arena_bytes): c for c in grid}
    image = None
    for row, policy in enumerate(policies):
        for col, latency in enumerate(latencies):
            ax = axes[row][col]
            rates = [[by_key[(policy, latency, w, a)].deadlock_rate for w in writers]
                     for a in arenas]
            image = ax.imshow(rates, origin="lower", cmap="RdYlGn_r", vmin=0, vmax=1,
                              aspect="auto")
            for y, a in enumerate(arenas):
                for x, w in enumerate(writers):
                    mbps = by_key[(policy, latency, w, a)].mbps
                    ax.text(x, y, "-" if mbps is None else f"{mbps:.0f}", ha="center",
                            va="center", fontsize=7)
            ax.set_xticks(range(len(writers)), [str(w) for w in writers], fontsize=7)
            ax.set_yticks(range(len(arenas)), [f"{a >> 20} MiB" for a in arenas], fontsize=7)
            ax.set_title(f"{policy}, {latency * 1e3:g} ms one way", fontsize=8)
            if row == len(policies) - 1:
                ax.set_xlabel("writers", fontsize=7)
            if col == 0:
                ax.set_ylabel("host arena", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="deadlock rate (numbers: MB/s)")
    fig.suptitle("earmark sim sweep: where each policy deadlocks", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
