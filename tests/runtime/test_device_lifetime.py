"""A closed device goes with its last reference: no reference cycle keeps it, and its
arena (16 MiB by default), alive until the next full garbage collection. Sixty
devices opened and closed in turn held 300 MB more than one before this."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from earmark.host.policy import Policy
from earmark.runtime.embedded import EmbeddedTarget
from earmark.runtime.initiator_device import BlockDevice


@pytest.fixture
def no_collector() -> Iterator[None]:
    """Only reference counts free anything while the test runs."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("policy", [Policy.RESERVE, Policy.NONE])
def test_a_closed_device_and_its_arena_go_with_the_last_reference(
    embedded_target: EmbeddedTarget, no_collector: None, policy: Policy,
) -> None:
    async def main() -> None:
        dev = BlockDevice(embedded_target.url, policy=policy)
        async with dev:
            await dev.write(0, b"e" * 4096)
            assert await dev.read(0, 4096) == b"e" * 4096
        arena, device = weakref.ref(dev.arena), weakref.ref(dev)
        del dev
        assert device() is None, gc.get_referrers(device())
        assert arena() is None

    asyncio.run(main())
