"""`earmark attach` refusing what it cannot serve: one line on stderr, exit 2, nothing mounted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tools.attach import EarmarkAttach, is_mounted
from tools.peers import free_port
from tools.serve import EarmarkServe

EARMARK = [sys.executable, "-m", "earmark.cli"]


def attach(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EARMARK, "attach", *map(str, args)], capture_output=True,
                          text=True, timeout=60, check=False)


def mounts_at(path: Path) -> int:
    with open("/proc/self/mountinfo") as info:
        return sum(line.split(" ")[4] == str(path.resolve()) for line in info)


def refused(proc: subprocess.CompletedProcess[str], words: str, mountpoint: Path,
            mounts: int = 0) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert mounts_at(mountpoint) == mounts


def test_a_bad_url(tmp_path: Path) -> None:
    refused(attach("iscsi://127.0.0.1", tmp_path), "bad iSCSI URL", tmp_path)
    refused(attach("http://127.0.0.1/iqn.x/0", tmp_path), "bad iSCSI URL", tmp_path)


@pytest.mark.tcp  # free_port() binds; the attach connects
def test_an_unreachable_target(tmp_path: Path) -> None:
    url = f"iscsi://127.0.0.1:{free_port()}/iqn.2026-11.org.earmark:lun/0"
    refused(attach(url, tmp_path), "127.0.0.1", tmp_path)


def test_a_mountpoint_that_is_not_an_empty_directory(tmp_path: Path) -> None:
    url = "iscsi://127.0.0.1:1/iqn.2026-11.org.earmark:lun/0"  # checked before connecting
    (tmp_path / "file").write_text("x")
    refused(attach(url, tmp_path), "is not empty", tmp_path)
    refused(attach(url, tmp_path / "file"), "is not a directory", tmp_path / "file")


@pytest.mark.tcp  # earmark serve listens on loopback
def test_a_mountpoint_in_use(tmp_path: Path) -> None:
    lun = tmp_path / "lun.img"
    lun.write_bytes(bytes(1 << 20))
    with EarmarkServe(lun) as serve, EarmarkAttach(serve.url, tmp_path / "mnt") as first:
        refused(attach(serve.url, first.mountpoint), "is in use", first.mountpoint, mounts=1)
        assert first.disk.stat().st_size == 1 << 20
        assert first.stop() == 0
        assert not is_mounted(first.mountpoint)


@pytest.mark.tcp  # earmark serve listens on loopback
def test_memory_too_small_for_the_requests_in_flight(tmp_path: Path) -> None:
    lun = tmp_path / "lun.img"
    lun.write_bytes(bytes(1 << 20))
    (tmp_path / "mnt").mkdir()
    with EarmarkServe(lun) as serve:
        refused(attach(serve.url, tmp_path / "mnt", "--memory", "1040KiB"),
                "cannot hold 32 commands", tmp_path / "mnt")
        refused(attach(serve.url, tmp_path / "mnt", "--memory", "128KiB"),
                "the arena can never grant", tmp_path / "mnt")  # not even its receive buffer


def test_detach_of_what_no_attach_serves(tmp_path: Path) -> None:
    proc = subprocess.run([*EARMARK, "detach", str(tmp_path)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"earmark detach: error: no earmark attach is mounted at {tmp_path}"]
