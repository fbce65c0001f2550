"""Backing stores: validation messages, scatter/gather I/O, punching reads back zeros."""

import ctypes
import errno
import os
from pathlib import Path

import pytest

from earmark.target.backing import Backing, BackingError, FileBacking, MemoryBacking


def make(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "lun.img"
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_missing_file_says_how_to_create_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.img"
    with pytest.raises(BackingError) as info:
        FileBacking(path)
    assert str(info.value) == (
        f"LUN file {path} does not exist: create it with `earmark serve --size 1G {path}`"
    )


def test_size_must_be_whole_blocks(tmp_path: Path) -> None:
    path = make(tmp_path, 3000)
    with pytest.raises(BackingError) as info:
        FileBacking(path)
    assert str(info.value) == (
        f"LUN file {path} is 3000 bytes, not a multiple of the 512-byte block size"
    )
    path4k = make(tmp_path, 4096 + 512)
    with pytest.raises(BackingError, match="4096-byte block size"):
        FileBacking(path4k, block_size=4096)


def test_empty_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(BackingError, match="is empty"):
        FileBacking(make(tmp_path, 0))
    with pytest.raises(BackingError, match="is a directory"):
        FileBacking(tmp_path)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make(tmp_path, 4096)

    # Root opens any file, and the tests run as root: refuse the open as the kernel would.
    def refuse(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(BackingError, match="cannot be opened for reading and writing"):
        FileBacking(path)


def stores(tmp_path: Path) -> list[Backing]:
    return [FileBacking(make(tmp_path, 1 << 20)), MemoryBacking(1 << 20)]


def test_scatter_gather_round_trip(tmp_path: Path) -> None:
    for store in stores(tmp_path):
        assert store.size == 1 << 20
        parts = [memoryview(bytes([i + 1]) * (100 * (i + 1))) for i in range(5)]
        store.write(4096, parts)
        out = [memoryview(bytearray(700)), memoryview(bytearray(800))]
        store.readinto(4096, out)
        assert bytes(out[0]) + bytes(out[1]) == b"".join(bytes(p) for p in parts)
        store.sync()
        store.close()


def test_a_short_pwritev_is_finished_where_it_stopped(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """One pwritev usually takes the whole write; when it takes less (a signal can cut
    it short), the rest is written where it stopped, not the whole again."""
    store = FileBacking(make(tmp_path, 1 << 20))
    real = os.pwritev

    def at_most_150(fd: int, buffers: list[memoryview], offset: int) -> int:
        first = bytes(b"".join(bytes(b) for b in buffers)[:150])
        return real(fd, [memoryview(first)], offset)

    monkeypatch.setattr(os, "pwritev", at_most_150)
    parts = [memoryview(bytes([i + 1]) * (100 * (i + 1))) for i in range(5)]  # 1,500 B
    store.write(8192, parts)
    monkeypatch.undo()
    out = memoryview(bytearray(1500 + 512))
    store.readinto(8192, [out])
    assert bytes(out[:1500]) == b"".join(bytes(p) for p in parts)
    assert bytes(out[1500:]) == bytes(512)  # nothing past the end of the write
    store.close()


def test_punch_reads_zeros_and_keeps_size(tmp_path: Path) -> None:
    for store in stores(tmp_path):
        store.write(0, [memoryview(b"\xa6" * 65536)])
        store.punch(4096, 8192)
        buf = bytearray(65536)
        store.readinto(0, [memoryview(buf)])
        assert buf[:4096] == b"\xa6" * 4096
        assert buf[4096:12288] == bytes(8192)
        assert buf[12288:] == b"\xa6" * (65536 - 12288)
        assert store.size == 1 << 20
        store.close()


def test_punch_falls_back_to_zeros_when_refused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileBacking(make(tmp_path, 2 << 20))
    calls: list[tuple[int, int]] = []

    def refuse(fd: int, mode: int, offset: int, length: int) -> int:
        calls.append((offset, length))
        monkeypatch.setattr(ctypes, "get_errno", lambda: errno.EOPNOTSUPP)
        return -1

    store._fallocate = refuse
    store.write(0, [memoryview(b"\xff" * (2 << 20))])
    store.punch(512, (1 << 20) + 1024)  # more than one chunk of zeros
    buf = bytearray(2 << 20)
    store.readinto(0, [memoryview(buf)])
    end = 512 + (1 << 20) + 1024
    assert buf[:512] == b"\xff" * 512 and buf[512:end] == bytes(end - 512)
    assert buf[end:] == b"\xff" * ((2 << 20) - end)
    store.punch(0, 512)  # the refusal is remembered: no second attempt
    assert calls == [(512, (1 << 20) + 1024)]
    store.close()


def test_out_of_range_is_refused(tmp_path: Path) -> None:
    for store in stores(tmp_path):
        with pytest.raises(BackingError):
            store.readinto((1 << 20) - 10, [memoryview(bytearray(11))])
        with pytest.raises(BackingError):
            store.write(-1, [memoryview(b"x")])
        with pytest.raises(BackingError):
            store.punch(1 << 20, 1)
        store.close()


def test_read_only_file_refuses_writes(tmp_path: Path) -> None:
    store = FileBacking(make(tmp_path, 4096), read_only=True)
    with pytest.raises(OSError):
        store.write(0, [memoryview(b"x" * 512)])
    store.close()


def test_memory_backing_needs_a_size() -> None:
    with pytest.raises(BackingError):
        MemoryBacking(0)
