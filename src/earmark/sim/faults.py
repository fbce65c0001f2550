"""The network's seeded faults, as a link consults them: delay spikes and partitions.

A spike delays one segment (and, since nothing overtakes it, what follows: a short
stall of that direction); a partition stops every byte on every link from leaving
until it heals, as a cable pulled and plugged back in, with TCP's retransmissions
then carrying what waited. Both are drawn from the run's seed, so a failing run
replays exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["NO_FAULTS", "LinkFaults"]


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """`spike_p`: the chance a segment is delayed, by up to `spike_s` more seconds;
    `partitions`: (start, end) windows of virtual time when nothing leaves, in order."""

    spike_p: float = 0.0
    spike_s: float = 0.0
    partitions: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.spike_p <= 1 or self.spike_s < 0:
            raise ValueError("a spike's chance is in [0, 1] and its delay >= 0")
        if any(end < start for start, end in self.partitions) or \
                list(self.partitions) != sorted(self.partitions):
            raise ValueError("partitions are (start, end) windows, in order")

    def spike(self, rng: random.Random) -> float:
        """The extra delay of the next segment."""
        if self.spike_p and rng.random() < self.spike_p:
            return rng.random() * self.spike_s
        return 0.0

    def heals(self, now: float) -> float:
        """When a byte written at `now` may leave (now, unless a partition holds it; one
        that overlaps the next heals when that one does)."""
        at = now
        for start, end in self.partitions:
            if start <= at < end:
                at = end
        return at

    @classmethod
    def draw(cls, rng: random.Random, horizon: float, *, spikes: bool,
             partitions: bool) -> LinkFaults:
        """A fault mix for a run of about `horizon` virtual seconds."""
        cuts: list[tuple[float, float]] = []
        if partitions:
            at = 0.0
            for _ in range(rng.randint(1, 3)):
                at += rng.random() * horizon / 3
                cuts.append((at, at + rng.uniform(0.01, 1.0)))
                at = cuts[-1][1]
        return cls(spike_p=rng.uniform(0.001, 0.05) if spikes else 0.0,
                   spike_s=rng.uniform(0.001, 0.5) if spikes else 0.0,
                   partitions=tuple(cuts))


NO_FAULTS = LinkFaults()
