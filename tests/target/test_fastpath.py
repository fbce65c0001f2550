"""The target's fast paths: cached reads and plain writes on the loop thread, and their
fallbacks.

A small read whose blocks are in the page cache is done on the event loop with
preadv2(RWF_NOWAIT), a small plain write with a buffered pwritev; anything else (not
cached, a kernel without the flag, an error, a larger transfer, FUA) must still go
through the thread pool and come back with the right data. `earmark serve --loop
uvloop` runs the same code on uvloop.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import os
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import earmark
from earmark.runtime import connection
from earmark.runtime.embedded import EmbeddedTarget
from earmark.target import backing as backing_module
from earmark.target import loop_io
from earmark.target.backing import BackingError, FileBacking, MemoryBacking
from earmark.target.events import IoRequest
from earmark.target.executor import run_io
from tools import peers

SIZE = 4 << 20


@pytest.fixture
def lun(tmp_path: Path) -> Path:
    path = tmp_path / "lun.img"
    path.write_bytes(os.urandom(SIZE))  # just written: in the page cache
    return path


def test_read_cached_fills_the_views_from_the_page_cache(lun: Path) -> None:
    backing = FileBacking(lun)
    want = lun.read_bytes()[8192 : 8192 + 6144]
    a, b = bytearray(2048), bytearray(4096)
    assert backing.read_cached(8192, [memoryview(a), memoryview(b)])
    assert bytes(a + b) == want
    with pytest.raises(BackingError):
        backing.read_cached(SIZE - 512, [memoryview(bytearray(1024))])
    backing.close()


def test_read_cached_declines_instead_of_waiting(lun: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    backing = FileBacking(lun)
    view = memoryview(bytearray(4096))

    def would_block(*args: object) -> int:
        raise BlockingIOError(errno.EAGAIN, "not cached")

    monkeypatch.setattr(os, "preadv", would_block)
    assert not backing.read_cached(0, [view])

    def unsupported(*args: object) -> int:
        raise OSError(errno.EOPNOTSUPP, "no RWF_NOWAIT here")

    monkeypatch.setattr(os, "preadv", unsupported)
    assert not backing.read_cached(0, [view])
    monkeypatch.undo()
    # Having been told no once, it stops asking; readinto still works.
    assert not backing.read_cached(0, [view])
    backing.readinto(0, [view])
    assert bytes(view) == lun.read_bytes()[:4096]
    backing.close()


SHM = Path("/dev/shm")


@pytest.fixture
def shm_lun() -> Iterator[Path]:
    """A LUN file on tmpfs, where preadv2(RWF_NOWAIT) answers EOPNOTSUPP (every Linux has
    /dev/shm: a machine without it fails here rather than skip the case)."""
    fd, name = tempfile.mkstemp(dir=SHM, prefix="earmark-lun-")
    os.write(fd, os.urandom(SIZE))
    os.close(fd)
    yield Path(name)
    os.unlink(name)


def test_a_lun_on_tmpfs_reads_on_the_loop(
    shm_lun: Path, embedded_targets: Callable[..., EmbeddedTarget], pooled: list[int]
) -> None:
    target = embedded_targets(FileBacking(shm_lun), memory=16 << 20)
    data = shm_lun.read_bytes()
    assert _read_all(target.url, READS) == [data[o : o + n] for o, n in READS]
    # Every small read, each time (not only until RWF_NOWAIT is refused), on the loop.
    assert _read_all(target.url, READS[:4]) == [data[o : o + n] for o, n in READS[:4]]
    assert pooled and all(n > loop_io.INLINE_BYTES for n in pooled)


def test_a_file_is_in_memory_by_its_mount_line(lun: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    info = os.stat(lun)
    device = f"{os.major(info.st_dev)}:{os.minor(info.st_dev)}"
    table = tmp_path / "mountinfo"
    table.write_text(f"22 1 {device} / /mnt/a\\040b rw shared:1 - tmpfs tmpfs rw\n")
    monkeypatch.setattr(backing_module, "_MOUNTINFO", str(table))

    def no_nowait(fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        if flags:
            raise OSError(errno.EOPNOTSUPP, "no RWF_NOWAIT on tmpfs")
        return real(fd, buffers, offset)

    real = os.preadv
    monkeypatch.setattr(os, "preadv", no_nowait)
    view = memoryview(bytearray(4096))
    on_tmpfs = FileBacking(lun)
    assert on_tmpfs.read_cached(4096, [view]) and on_tmpfs.read_cached(4096, [view])
    assert bytes(view) == lun.read_bytes()[4096:8192]
    on_tmpfs.close()
    table.write_text(f"22 1 {device} / /mnt rw - ext4 /dev/vda rw\n")
    on_disk = FileBacking(lun)
    assert not on_disk.read_cached(4096, [view])
    on_disk.close()


def test_memory_backing_is_always_cached() -> None:
    backing = MemoryBacking(4096)
    backing.write(0, [memoryview(b"x" * 4096)])
    view = memoryview(bytearray(4096))
    assert backing.read_cached(0, [view]) and bytes(view) == b"x" * 4096


def _read_all(url: str, reads: list[tuple[int, int]]) -> list[bytes]:
    async def go() -> list[bytes]:
        dev = earmark.open(url)
        await dev.connect()
        try:
            return list(await asyncio.gather(*(dev.read(o, n) for o, n in reads)))
        finally:
            await dev.close()

    return asyncio.run(go())


@pytest.fixture
def served(
    lun: Path, embedded_targets: Callable[..., EmbeddedTarget]
) -> tuple[EmbeddedTarget, FileBacking]:
    backing = FileBacking(lun)
    return embedded_targets(backing, memory=16 << 20), backing


READS = [(0, 4096), (12288, 512), (1 << 20, 4096), (SIZE - 8192, 8192), (65536, 65536),
         (3 << 20, 256 << 10)]  # the last two: at and above the inline limit


@pytest.fixture
def pooled(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes of each backing I/O the target hands to its thread pool, in order."""
    sizes: list[int] = []

    def counting(io: IoRequest) -> bytes:
        sizes.append(sum(len(v) for v in io.views))
        return run_io(io)

    monkeypatch.setattr(connection, "run_io", counting)
    return sizes


def test_reads_on_the_loop_and_on_the_pool_return_the_same_bytes(
    lun: Path, served: tuple[EmbeddedTarget, FileBacking], monkeypatch: pytest.MonkeyPatch,
    pooled: list[int],
) -> None:
    target, backing = served
    data = lun.read_bytes()
    want = [data[o : o + n] for o, n in READS]
    assert _read_all(target.url, READS) == want
    # Only what is over the inline limit went to a thread (cached small reads did not).
    assert all(n > loop_io.INLINE_BYTES for n in pooled)
    # Nothing cached (or no RWF_NOWAIT): every read goes to the pool, same bytes.
    pooled.clear()
    monkeypatch.setattr(backing, "read_cached", lambda offset, views: False)
    assert _read_all(target.url, READS) == want
    assert len(pooled) >= len(READS)


def test_a_failing_cached_read_falls_back_to_the_pool(
    lun: Path, served: tuple[EmbeddedTarget, FileBacking], monkeypatch: pytest.MonkeyPatch
) -> None:
    target, backing = served

    def broken(offset: int, views: list[memoryview]) -> bool:
        raise OSError(errno.EIO, "flaky")

    monkeypatch.setattr(backing, "read_cached", broken)
    assert _read_all(target.url, [(4096, 4096)]) == [lun.read_bytes()[4096:8192]]


WRITES = [(0, 4096), (12288, 512), (1 << 20, 65536), (2 << 20, 256 << 10)]  # last: pooled


def _write_all(url: str, writes: list[tuple[int, bytes]], *, fua: bool = False) -> None:
    async def go() -> None:
        dev = earmark.open(url)
        await dev.connect()

        async def one(offset: int, data: bytes) -> None:
            if not fua:
                return await dev.write(offset, data)
            # WRITE(10) with FUA (byte 1, bit 3).
            cdb = struct.pack(">BBIBHB", 0x2A, 0x08, offset // 512, 0, len(data) // 512, 0)
            await dev.execute(cdb, write_data=memoryview(data))

        try:
            await asyncio.gather(*(one(o, data) for o, data in writes))
        finally:
            await dev.close()

    asyncio.run(go())


def test_writes_on_the_loop_and_on_the_pool_land_the_same(
    lun: Path, served: tuple[EmbeddedTarget, FileBacking], monkeypatch: pytest.MonkeyPatch,
    pooled: list[int],
) -> None:
    target, backing = served
    writes = [(o, os.urandom(n)) for o, n in WRITES]
    _write_all(target.url, writes)
    # Small plain writes were done on the loop: only the large one went to a thread.
    assert pooled and all(n > loop_io.INLINE_BYTES for n in pooled)
    assert _read_all(target.url, [(o, len(d)) for o, d in writes]) == [d for _, d in writes]
    # FUA must sync, which never happens on the loop: every write goes to a thread.
    pooled.clear()
    again = [(o, os.urandom(len(d))) for o, d in writes]
    _write_all(target.url, again, fua=True)
    assert len(pooled) >= len(WRITES)
    # A backing that refuses (or fails) on the loop: the threads write it, same bytes.
    pooled.clear()

    def broken(offset: int, views: list[memoryview]) -> bool:
        raise OSError(errno.EIO, "flaky")

    monkeypatch.setattr(backing, "write_now", broken)
    third = [(o, os.urandom(len(d))) for o, d in writes]
    _write_all(target.url, third)
    assert len(pooled) >= len(WRITES)
    assert _read_all(target.url, [(o, len(d)) for o, d in third]) == [d for _, d in third]


@pytest.mark.peers
@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop not installed")
def test_serve_on_uvloop_logs_in_reads_and_stops_cleanly(lun: Path) -> None:
    port = peers.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "earmark.cli", "serve", str(lun), "--port", str(port),
         "--loop", "uvloop"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline() and proc.stdout.readline().strip()
        assert url.startswith("iscsi://")
        assert peers.iscsi_readcapacity16(url) == (512, SIZE // 512)
        assert peers.iscsi_perf(url, blocks=8, queue_depth=4, seconds=1).iops > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, err
    assert "Traceback" not in err
