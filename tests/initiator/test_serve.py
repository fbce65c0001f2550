"""The initiator against earmark's own target (`earmark serve`, started here on a free port)."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

import earmark
from earmark.initiator.errors import AuthenticationFailedError
from earmark.runtime.initiator_device import discover
from tests.targets import shuffled_spans
from tools.serve import EarmarkServe

pytestmark = pytest.mark.tcp

LUN_BYTES = 8 << 20
CHAP = ("serve-user", "serve-secret-0123")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    path = tmp_path_factory.mktemp("serve") / "disk.img"
    with EarmarkServe(path, "--size", "8M", "--chap", f"{CHAP[0]}:{CHAP[1]}") as served:
        yield served.port, path


def test_discovery_pattern_and_chap_against_earmark_serve(served: tuple[int, Path]) -> None:
    port, path = served
    rng = random.Random(7)

    async def main() -> str:
        (target,) = await discover(f"iscsi://127.0.0.1:{port}")
        url = f"iscsi://{CHAP[0]}%{CHAP[1]}@127.0.0.1:{port}/{target.name}/0"
        async with earmark.open(url) as dev:
            assert dev.size == LUN_BYTES
            model = bytearray(os.urandom(LUN_BYTES))
            spans = shuffled_spans(rng, LUN_BYTES, [4096, 65536, 512 * 301, 1 << 20])
            for i in range(0, len(spans), 8):
                await asyncio.gather(*(dev.write(o, memoryview(model)[o : o + n])
                                       for o, n in spans[i : i + 8]))
            await dev.flush()
            back = bytearray(LUN_BYTES)
            await dev.readinto(0, back)
            assert back == model
        wrong = f"iscsi://{CHAP[0]}%not-the-secret-0@127.0.0.1:{port}/{target.name}/0"
        with pytest.raises(AuthenticationFailedError):
            async with earmark.open(wrong):
                pass
        return target.name

    asyncio.run(main())
    assert path.stat().st_size == LUN_BYTES
