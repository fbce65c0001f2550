"""`earmark demo`: the same writers workload under each policy, one table of fates.

Each run gets a fresh small host arena and its own device; the workload is
fixed in total (the pages split among the writers) so rows compare. A run ends
"completed" (fsync returned; the data is then read back and checked) or
"deadlocked" with the cycle the detector named. The stack under the cache is a
`Stack`: earmark's initiator and an embedded earmark target, over TCP or over the
simulator's network on virtual time (sim/stacks.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from earmark.host.device import PageDevice
from earmark.host.policy import HostTuning, Policy
from earmark.host.watermarks import emergency_bytes
from earmark.memory import Arena, format_bytes
from earmark.memory.levels import PAGE_BYTES
from earmark.sim.workload import RunResult, Workload, run_writers


class Stack(Protocol):
    """Where the page cache writes: opened per run, on that run's host arena."""

    def open(self, arena: Arena, policy: Policy) -> AbstractAsyncContextManager[PageDevice]: ...

    async def verify(self, expected: dict[int, int]) -> bool:
        """Read every expected page past any cache and compare checksums."""
        ...


@dataclass(frozen=True, slots=True)
class DemoConfig:
    writers: list[int] = field(default_factory=lambda: [1, 256])
    policies: list[Policy] = field(default_factory=lambda: list(Policy))
    arena_bytes: int = 4 << 20
    lun_bytes: int = 64 << 20
    total_pages: int = 2048
    seed: int = 1
    stall_s: float = 10.0
    tuning: HostTuning = field(default_factory=HostTuning)
    #: The writers store through mappings instead of pwrite.
    mapped: bool = False

    def arena_for(self, policy: Policy) -> Arena:
        emergency = 0
        if policy is Policy.MEMPOOL:
            emergency = emergency_bytes(self.arena_bytes)
        return Arena(self.arena_bytes, emergency=emergency, name="host arena")


@dataclass(slots=True)
class Row:
    result: RunResult
    verified: bool | None

    def as_json(self) -> dict[str, object]:
        r = self.result
        return {
            "policy": r.policy,
            "writers": r.writers,
            "outcome": r.outcome,
            "cycle": r.cycle,
            "mbps": round(r.mbps, 3),
            "p99_ms": None if r.p99_ms is None else round(r.p99_ms, 3),
            "peak_arena_bytes": r.peak_arena_bytes,
            "arena_bytes": r.arena_bytes,
            "verified": self.verified,
        }


async def run_matrix(
    stack: Stack,
    config: DemoConfig,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[Row]:
    rows: list[Row] = []
    span = config.lun_bytes // PAGE_BYTES
    for policy in config.policies:
        for writers in config.writers:
            arena = config.arena_for(policy)
            work = Workload(
                writers=writers,
                pages_per_writer=max(1, config.total_pages // writers),
                span_pages=span,
                seed=config.seed,
                stall_s=config.stall_s,
                mapped=config.mapped,
            )
            label = f"{policy.value} x {writers}"

            def report(done: int, total: int, label: str = label) -> None:
                if progress is not None:
                    progress(label, done, total)

            async with stack.open(arena, policy) as device:
                result = await run_writers(arena, device, policy, work, config.tuning, report)
            verified = None
            if result.outcome == "completed":
                verified = await stack.verify(result.expected)
            rows.append(Row(result, verified))
    return rows


def render(rows: list[Row], console: Console) -> None:
    """One row per run; a deadlocked run's speed is not a speed, so it shows none."""
    arena = format_bytes(rows[0].result.arena_bytes) if rows else "?"
    table = Table(title=f"random 4 KiB writers, {arena} host arena")
    for column in ("policy", "writers", "outcome", "MB/s", "p99", "peak", "data"):
        table.add_column(column, justify="right" if column in ("writers", "MB/s") else "left",
                         no_wrap=True)
    for row in rows:
        r = row.result
        done = r.outcome == "completed"
        table.add_row(
            r.policy,
            str(r.writers),
            "[green]completed[/]" if done else f"[red]deadlock {r.seconds:.1f} s[/]",
            f"{r.mbps:.1f}" if done else "-",
            f"{r.p99_ms:.1f} ms" if done and r.p99_ms is not None else "-",
            f"{100 * r.peak_arena_bytes / r.arena_bytes:.0f}%",
            {True: "ok", False: "[red]CORRUPT[/]", None: "-"}[row.verified],
        )
    console.print(table)
    for row in rows:
        if row.result.cycle:
            r = row.result
            console.print(f"[bold]{r.policy} x {r.writers}[/]: {r.cycle}", soft_wrap=True)


async def live(stack: Stack, config: DemoConfig, console: Console) -> list[Row]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} pages"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, object] = {}

        def progress(label: str, done: int, total: int) -> None:
            # The bar moves every 1/256 of a run (and at its end), not every page: it
            # redraws a few times a second anyway, and an update per page is host time
            # every policy's figure would pay.
            if done % max(1, total >> 8) and done != total:
                return
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done)  # type: ignore[arg-type]

        return await run_matrix(stack, config, progress)


def print_json(rows: list[Row]) -> None:
    print(json.dumps({"runs": [row.as_json() for row in rows]}, ensure_ascii=False))
