"""The target under more writes than its memory holds: reserve admits, none deadlocks.

16 sessions each keep 32 writes of 1 MiB in flight against a target with a
16 MiB arena. Under `reserve` the target advertises command credit only for
buffers it holds, so every write completes; under `none` it accepts every
command and allocates on demand, and the reassembly deadlock must be reported
by the detector in words, not left as a hang.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

import earmark
from earmark.initiator.errors import InitiatorError
from earmark.runtime.embedded import EmbeddedTarget
from earmark.target.backing import FileBacking
from earmark.target.session import AdmissionPolicy

pytestmark = pytest.mark.tcp

SESSIONS = 16
QUEUE_DEPTH = 32
BLOCK = 1 << 20
MEMORY = 16 << 20
REGION = QUEUE_DEPTH * BLOCK


def pattern(session: int, index: int) -> bytes:
    seed = hashlib.sha256(f"s{session} i{index}".encode()).digest()
    return seed * (BLOCK // len(seed))


async def session_writes(url: str, session: int) -> None:
    async with earmark.open(url, reconnect_timeout=5, max_attempts=2) as dev:
        base = session * REGION
        await asyncio.gather(
            *(dev.write(base + i * BLOCK, pattern(session, i)) for i in range(QUEUE_DEPTH))
        )
        await dev.flush()


def lun(tmp_path: Path) -> FileBacking:
    path = tmp_path / "lun.img"
    with open(path, "wb") as f:
        f.truncate(SESSIONS * REGION)
    return FileBacking(path)


def test_reserve_admits_only_what_it_holds_and_every_write_lands(tmp_path: Path) -> None:
    backing = lun(tmp_path)
    with EmbeddedTarget(backing, memory=MEMORY, policy=AdmissionPolicy.RESERVE) as target:

        async def main() -> None:
            await asyncio.wait_for(
                asyncio.gather(*(session_writes(target.url, s) for s in range(SESSIONS))), 300
            )

        asyncio.run(main())
        assert target.deadlock is None
        assert target.arena.high_water <= target.arena.capacity
    fd = os.open(backing.path, os.O_RDONLY)
    try:
        for s in range(SESSIONS):
            for i in range(QUEUE_DEPTH):
                got = os.pread(fd, BLOCK, s * REGION + i * BLOCK)
                assert got == pattern(s, i), f"session {s} block {i} did not read back intact"
    finally:
        os.close(fd)


def test_none_ends_in_a_named_deadlock_not_a_hang(tmp_path: Path) -> None:
    backing = lun(tmp_path)
    with EmbeddedTarget(backing, memory=MEMORY, policy=AdmissionPolicy.NONE,
                        watchdog_s=1.0) as target:

        async def main() -> list[BaseException | None]:
            return await asyncio.wait_for(
                asyncio.gather(
                    *(session_writes(target.url, s) for s in range(SESSIONS)),
                    return_exceptions=True,
                ),
                120,
            )

        results = asyncio.run(main())
        report = target.deadlock
        assert report is not None, "the reassembly deadlock was not reported"
        # The readers wait for the buffers of unsolicited data (FirstBurstLength 64 KiB).
        assert "wait for 64 KiB BUFFER" in report.cycle, report.cycle
        assert "freed only by" in report.cycle and "target arena" in report.cycle
        assert target.arena.high_water <= target.arena.capacity
        assert any(isinstance(r, InitiatorError) for r in results), results
