"""A backing store that fails: a full filesystem, and an EIO.

A thin LUN whose filesystem fills answers the write that needed space with DATA PROTECT /
SPACE ALLOCATION FAILED WRITE PROTECT (what thin-provisioning-aware initiators look for),
keeps serving reads and overwrites of blocks it has, and takes new writes again once
space is freed. A failed read or write (EIO) answers MEDIUM ERROR for that command alone.
Neither ends the session, and the target's arena goes back to its idle figure.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import earmark
from earmark.runtime.embedded import EmbeddedTarget
from earmark.scsi.sense import ScsiError, SenseKey
from earmark.target.backing import FileBacking, MemoryBacking
from tests.arena_settled import arena_settled

pytestmark = pytest.mark.tcp

LUN = 4 << 20
BLOCK = 4096


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs), so ENOSPC comes from the kernel."""
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "earmark-test", str(mount)],
                   check=True, capture_output=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True, capture_output=True)


def test_a_full_filesystem_answers_space_allocation_failed_and_recovers(
    small_fs: Path, embedded_targets: Callable[..., EmbeddedTarget],
    caplog: pytest.LogCaptureFixture,
) -> None:
    lun = small_fs / "lun.img"
    with open(lun, "wb") as f:
        f.truncate(LUN)  # thin: 4 MiB of holes on a 1 MiB filesystem
    backing = FileBacking(lun)
    target = embedded_targets(backing, memory=16 << 20)
    idle = target.arena.committed  # no session yet

    async def go() -> None:
        async with earmark.open(target.url) as dev:
            first = os.urandom(BLOCK)
            await dev.write(0, first)  # there is room for this one
            filler = small_fs / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:  # then the filesystem fills up
                while True:
                    os.write(fd, b"\xff" * BLOCK)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
            finally:
                os.close(fd)
            for at in (LUN // 2, LUN // 2 + BLOCK):
                with pytest.raises(ScsiError) as raised:
                    await dev.write(at, os.urandom(BLOCK))  # a hole: needs space
                err = raised.value
                assert (err.key, err.asc, err.ascq) == (SenseKey.DATA_PROTECT, 0x27, 0x07)
            # The same session goes on: what is there reads back, and is overwritten.
            assert await dev.read(0, BLOCK) == first
            again = os.urandom(BLOCK)
            await dev.write(0, again)
            assert await dev.read(0, BLOCK) == again
            filler.unlink()  # space again: the write that failed now succeeds
            later = os.urandom(BLOCK)
            await dev.write(LUN // 2, later)
            assert await dev.read(LUN // 2, BLOCK) == later
        await arena_settled(target, idle)

    with caplog.at_level(logging.WARNING, logger="earmark.target.executor"):
        asyncio.run(go())
    said = [r.getMessage().split(":")[1].strip() for r in caplog.records
            if r.name == "earmark.target.executor"]
    # Once when it filled, once when writes succeeded again: not once per failed write.
    assert said == ["the backing store is full (No space left on device) at LBA 4096",
                    "writes succeed again"]


class FailingBacking(MemoryBacking):
    """A memory LUN whose blocks in `bad` fail with EIO, on reads and on writes."""

    def __init__(self, size: int, bad: range) -> None:
        super().__init__(size)
        self.bad = bad

    def _check(self, offset: int, buffers: list[memoryview]) -> None:
        end = offset + sum(map(len, buffers))
        if offset < self.bad.stop and self.bad.start < end:
            raise OSError(errno.EIO, "Input/output error")

    def readinto(self, offset: int, buffers: list[memoryview]) -> None:
        self._check(offset, buffers)
        super().readinto(offset, buffers)

    def read_cached(self, offset: int, buffers: list[memoryview]) -> bool:
        self._check(offset, buffers)
        return super().read_cached(offset, buffers)

    def write(self, offset: int, buffers: list[memoryview]) -> None:
        self._check(offset, buffers)
        super().write(offset, buffers)


def test_an_eio_answers_medium_error_for_that_command_alone(
    embedded_targets: Callable[..., EmbeddedTarget]
) -> None:
    bad = range(8 * BLOCK, 9 * BLOCK)
    target = embedded_targets(FailingBacking(LUN, bad), memory=16 << 20)
    idle = target.arena.committed  # no session yet

    async def go() -> None:
        async with earmark.open(target.url) as dev:
            good = os.urandom(BLOCK)
            results = await asyncio.gather(
                dev.write(0, good), dev.write(bad.start, os.urandom(BLOCK)),
                dev.write(16 * BLOCK, good), return_exceptions=True)
            assert results[0] is None and results[2] is None
            write_failed = results[1]
            assert isinstance(write_failed, ScsiError)
            assert (write_failed.key, write_failed.asc, write_failed.ascq) == (
                SenseKey.MEDIUM_ERROR, 0x0C, 0x00)
            with pytest.raises(ScsiError) as raised:
                await dev.read(bad.start, BLOCK)
            err = raised.value
            assert (err.key, err.asc, err.ascq) == (SenseKey.MEDIUM_ERROR, 0x11, 0x00)
            # Only those commands: the session serves the rest as before.
            assert await dev.read(0, BLOCK) == good
            assert await dev.read(16 * BLOCK, BLOCK) == good
        await arena_settled(target, idle)

    asyncio.run(go())
