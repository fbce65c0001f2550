"""The target's disk on the simulator: seeded latency, latency spikes and I/O errors.

Latency is what the virtual-time loop's executor waits before the backing I/O's
result is due (exponential around a mean, with seeded spikes); an I/O error is a
write the disk refuses (EIO), which the target must report and the initiator must
pass up to fsync, never drop.
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass

from earmark.sim.stacks import SlowBacking
from earmark.target.backing import Backing

__all__ = ["Disk", "DiskDelays", "FailingBacking"]


@dataclass(frozen=True, slots=True)
class Disk:
    """Latency exponential around `mean_s`, `spike_p` of I/Os up to `spike_s` later, and
    `error_p` of writes failing."""

    mean_s: float
    spike_p: float
    spike_s: float
    seed: int
    error_p: float = 0.0

    def delays(self) -> DiskDelays:
        """A fresh run's draws: what the loop's executor waits per I/O."""
        return DiskDelays(self)

    def backing(self, inner: Backing) -> Backing:
        """The disk around `inner`: every write through the executor (so it waits), and
        failing as often as `error_p` says."""
        return FailingBacking(inner, self.error_p, self.seed) if self.error_p else \
            SlowBacking(inner, 0.0)


class DiskDelays:
    """The seeded latency draws of one run's disk."""

    __slots__ = ("_disk", "_rng")

    def __init__(self, disk: Disk) -> None:
        self._disk = disk
        self._rng = random.Random(disk.seed)

    def __call__(self) -> float:
        d, rng = self._disk, self._rng
        spike = rng.random() * d.spike_s if d.spike_p and rng.random() < d.spike_p else 0.0
        return rng.expovariate(1 / d.mean_s) + spike


class FailingBacking(SlowBacking):
    """A disk whose writes fail (EIO) with a seeded chance."""

    def __init__(self, inner: Backing, error_p: float, seed: int) -> None:
        super().__init__(inner, 0.0)
        self._error_p = error_p
        self._rng = random.Random(seed ^ 0x5EED)

    def write(self, offset: int, buffers: list[memoryview]) -> None:
        if self._rng.random() < self._error_p:
            raise OSError(errno.EIO, "simulated disk: write failed")
        super().write(offset, buffers)
