"""A sweep on the simulator: the real stacks, many seeds and network shapes, each run exact.

`reserve` must complete and read back under every one of them; `none` must end in a
named deadlock under every one of them (the cycle is the point of the demo, so a seed
where it escapes would mean the model lost its teeth).
"""

from __future__ import annotations

import pytest

from earmark.host.policy import Policy
from earmark.sim.demo import DemoConfig, run_matrix
from earmark.sim.stacks import SimStack
from earmark.sim.virtualtime import run_virtual

# (seed, one-way latency s, bandwidth B/s): loopback-like, a LAN, a slow thin link.
SHAPES = [(1, 50e-6, 1.25e9), (2, 200e-6, 125e6), (3, 2e-3, 12.5e6), (4, 50e-6, 1.25e9),
          (5, 500e-6, 1.25e9)]


@pytest.mark.parametrize(("seed", "latency", "bandwidth"), SHAPES)
def test_reserve_completes_and_none_deadlocks_under_every_seed_and_network(
    seed: int, latency: float, bandwidth: float
) -> None:
    config = DemoConfig(writers=[8, 96], policies=[Policy.NONE, Policy.RESERVE],
                        total_pages=2048, seed=seed)

    async def main() -> list[dict[str, object]]:
        async with SimStack(config.lun_bytes) as stack:
            return [row.as_json() for row in await run_matrix(stack, config)]

    for row in run_virtual(main, latency=latency, bandwidth=bandwidth):
        peak, capacity = row["peak_arena_bytes"], row["arena_bytes"]
        assert isinstance(peak, int) and isinstance(capacity, int) and peak <= capacity
        if row["policy"] == "reserve":
            assert row["outcome"] == "completed" and row["verified"] is True, row
        else:
            assert row["outcome"] == "deadlocked" and "100% full" in str(row["cycle"]), row
