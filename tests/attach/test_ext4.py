"""A real Linux filesystem on `earmark attach --loop`: ext4 made, filled, checked, read back,
and the target killed and restarted under it while it writes."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.attach import EarmarkAttach, is_mounted, mounted, run
from tools.peers import free_port
from tools.serve import EarmarkServe

LUN_BYTES = 64 << 20
pytestmark = pytest.mark.tcp  # earmark serve listens on loopback


def content(name: str, size: int) -> bytes:
    """Known bytes for the file ``name``: a function of its name, so nothing is kept."""
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def write_tree(root: Path, prefix: str, count: int) -> dict[Path, bytes]:
    files = {}
    for i in range(count):
        path = root / f"d{i % 5}" / f"{prefix}{i}.bin"
        path.parent.mkdir(exist_ok=True)
        data = content(str(path.relative_to(root)), 1000 + 37_000 * (i % 7))
        path.write_bytes(data)
        files[path.relative_to(root)] = data
    return files


def verify(root: Path, files: dict[Path, bytes]) -> list[str]:
    return [str(p) for p, data in files.items() if (root / p).read_bytes() != data]


@pytest.fixture
def lun(tmp_path: Path) -> Path:
    path = tmp_path / "lun.img"
    with path.open("wb") as f:
        f.truncate(LUN_BYTES)
    return path


@pytest.fixture
def target(lun: Path) -> Iterator[EarmarkServe]:
    with EarmarkServe(lun) as serve:
        yield serve


def test_ext4_made_filled_checked_and_read_back(target: EarmarkServe, tmp_path: Path) -> None:
    with EarmarkAttach(target.url, tmp_path / "mnt", "--loop") as attached:
        loop = attached.mkfs_ext4()
        with mounted(loop, tmp_path / "ext4") as fs:
            files = write_tree(fs, "f", 40)
            os.sync()
        run("fsck.ext4", "-fn", loop)  # raises unless it exits 0: clean
        with mounted(loop, tmp_path / "ext4", "-o", "ro") as fs:
            assert verify(fs, files) == []
        assert run(sys.executable, "-m", "earmark.cli", "detach", attached.mountpoint) == ""
        assert attached.wait() == 0
        assert not is_mounted(attached.mountpoint)
        assert loop not in run("losetup", "-a").split(":")


def test_the_mount_survives_the_target_killed_and_restarted_mid_write(
        lun: Path, tmp_path: Path) -> None:
    port = free_port()
    serve = EarmarkServe(lun, port=port).start()
    try:
        with EarmarkAttach(serve.url, tmp_path / "mnt", "--loop") as attached:
            loop = attached.mkfs_ext4()
            with mounted(loop, tmp_path / "ext4") as fs:
                synced = write_tree(fs, "before", 20)
                os.sync()
                writer = _Writer(fs)
                writer.start()
                assert writer.wait_for(3), writer.failure
                serve.kill()
                killed_at = writer.done
                serve = EarmarkServe(lun, port=port).start()
                assert writer.wait_for(killed_at + 5), writer.failure
                writer.stop()
                assert writer.failure is None
                os.sync()
                synced.update(writer.files)
            run("fsck.ext4", "-fn", loop)
            with mounted(loop, tmp_path / "ext4", "-o", "ro") as fs:
                assert verify(fs, synced) == []
            assert attached.stop() == 0
    finally:
        serve.stop()


class _Writer(threading.Thread):
    """Writes and fsyncs files one after another; ``files`` are those whose fsync returned."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.files: dict[Path, bytes] = {}
        self.done = 0
        self.failure: BaseException | None = None
        self._halt = threading.Event()
        self._progress = threading.Condition()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                name = Path(f"after{self.done}.bin")
                data = content(str(name), 200_000)
                with open(self.root / name, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                with self._progress:
                    self.files[name] = data
                    self.done += 1
                    self._progress.notify_all()
        except BaseException as exc:
            self.failure = exc
            with self._progress:
                self._progress.notify_all()

    def wait_for(self, count: int, timeout: float = 90.0) -> bool:
        with self._progress:
            return self._progress.wait_for(
                lambda: self.done >= count or self.failure is not None, timeout) and (
                self.failure is None)

    def stop(self) -> None:
        self._halt.set()
        self.join(60)
