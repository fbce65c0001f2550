"""The initiator against earmark's own target (`earmark serve`, started here on a free port)."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import earmark
from earmark.initiator.errors import AuthenticationFailedError
from earmark.runtime.initiator_device import discover
from tests.targets import shuffled_spans
from tools.peers import free_port, port_accepts

pytestmark = pytest.mark.tcp

LUN_BYTES = 8 << 20
CHAP = ("serve-user", "serve-secret-0123")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    path = tmp_path_factory.mktemp("serve") / "disk.img"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "earmark.cli", "serve", str(path), "--size", "8M", "--port",
         str(port), "--chap", f"{CHAP[0]}:{CHAP[1]}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not port_accepts(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"earmark serve did not start: {err}")
            time.sleep(0.05)
        yield port, path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
