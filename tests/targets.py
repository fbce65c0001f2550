"""What the shared target fixtures (tests/conftest.py) start, and how a test asks for another.

A module or test that needs a different tgtd or embedded target than the default says so
with `@tgtd_with(...)` / `@embedded_with(...)`: an indirect parametrization of the one
fixture, so every test still gets its peer from the same place (and, through it, the
`peers` / `tcp` markers). Equal specs share one module-scoped instance.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from earmark.runtime.embedded import DEFAULT_IQN as EMBEDDED_IQN
from tools.peers import DEFAULT_IQN as TGTD_IQN

__all__ = ["EmbeddedSpec", "TgtdSpec", "embedded_with", "tgtd_with"]


@dataclass(frozen=True)
class TgtdSpec:
    """One tgtd target with LUN 1 of `lun_bytes` (a sparse temp file)."""

    lun_bytes: int = 8 << 20
    iqn: str = TGTD_IQN
    chap: tuple[str, str] | None = None
    mutual: tuple[str, str] | None = None

    @property
    def id(self) -> str:
        return f"tgtd-{self.lun_bytes >> 10}KiB" + ("-chap" if self.chap else "")


@dataclass(frozen=True)
class EmbeddedSpec:
    """One earmark target on its own thread, LUN 0 on a `MemoryBacking` of `lun_bytes`."""

    lun_bytes: int = 1 << 20
    memory: int = 64 << 20
    iqn: str = EMBEDDED_IQN
    chap: tuple[str, str] | None = None

    @property
    def id(self) -> str:
        return f"embedded-{self.lun_bytes >> 10}KiB" + ("-chap" if self.chap else "")


def tgtd_with(lun_bytes: int = TgtdSpec.lun_bytes, *, iqn: str = TGTD_IQN,
              chap: tuple[str, str] | None = None,
              mutual: tuple[str, str] | None = None) -> pytest.MarkDecorator:
    """The `tgtd` fixture, for this test, with another LUN size, IQN or CHAP."""
    spec = TgtdSpec(lun_bytes, iqn, chap, mutual)
    return pytest.mark.parametrize("tgtd", [pytest.param(spec, id=spec.id)], indirect=True)


def embedded_with(lun_bytes: int = EmbeddedSpec.lun_bytes, *, memory: int = EmbeddedSpec.memory,
                  iqn: str = EMBEDDED_IQN,
                  chap: tuple[str, str] | None = None) -> pytest.MarkDecorator:
    """The `embedded_target` fixture, for this test, with another LUN, arena, IQN or CHAP."""
    spec = EmbeddedSpec(lun_bytes, memory, iqn, chap)
    return pytest.mark.parametrize("embedded_target", [pytest.param(spec, id=spec.id)],
                                   indirect=True)


def shuffled_spans(rng: random.Random, total: int, sizes: Sequence[int]) -> list[tuple[int, int]]:
    """``total`` bytes cut into (offset, length) spans of sizes drawn from ``sizes`` (the
    last one cut short), in random order: a whole-LUN write-and-read-back workload."""
    spans, at = [], 0
    while at < total:
        n = min(rng.choice(sizes), total - at)
        spans.append((at, n))
        at += n
    rng.shuffle(spans)
    return spans
