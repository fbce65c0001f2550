"""earmark's target against libiscsi's tools, and `earmark serve` as a user meets it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from earmark import peers
from earmark.iscsi.login import TargetEntry
from earmark.memory import Arena
from earmark.memory.levels import TargetLevel
from earmark.runtime.server import TargetServer, TargetSpec
from earmark.scsi.disk import Disk
from earmark.target.backing import MemoryBacking
from earmark.target.lun import LogicalUnit

pytestmark = pytest.mark.interop

IQN = "iqn.2026-11.org.earmark:test"
SIZE = 8 << 20
EARMARK = [sys.executable, "-m", "earmark.cli"]


class Running:
    """A TargetServer on its own event loop thread."""

    def __init__(self, chap: tuple[str, str] | None = None) -> None:
        self.backing = MemoryBacking(SIZE)
        disk = Disk(SIZE // 512, "T1")
        arena = Arena(16 << 20, levels=TargetLevel)
        spec = TargetSpec(TargetEntry(IQN, chap=chap), {0: LogicalUnit(0, disk, self.backing)})
        self.server = TargetServer([spec], arena=arena, port=peers.free_port())
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)

    def url(self, cred: str = "") -> str:
        return f"iscsi://{cred}127.0.0.1:{self.server.port}/{IQN}/0"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=2), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def target() -> Iterator[Running]:
    running = Running()
    try:
        yield running
    finally:
        running.stop()


def test_libiscsi_tools_see_the_disk(target: Running) -> None:
    inq = peers.iscsi_inq(target.url())
    assert inq.is_disk and "EARMARK" in inq.vendor
    block_size, num_blocks = peers.iscsi_readcapacity16(target.url())
    assert (block_size, num_blocks) == (512, SIZE // 512)
    (found,) = peers.iscsi_ls(f"iscsi://127.0.0.1:{target.server.port}")
    assert found.iqn == IQN
    # Every connection gave its receive buffer and slots back.
    deadline = time.monotonic() + 5
    while target.server.arena.committed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert target.server.arena.committed == 0


def test_iscsi_perf_reads_through_reserved_buffers(target: Running) -> None:
    result = peers.iscsi_perf(target.url(), blocks=8, queue_depth=8, seconds=1)
    assert result.iops > 0
    assert target.server.arena.high_water <= target.server.arena.capacity


def test_chap_right_secret_logs_in_and_wrong_one_is_refused() -> None:
    running = Running(chap=("user", "secret-12345"))
    try:
        assert peers.iscsi_inq(running.url("user%secret-12345@")).is_disk
        with pytest.raises(peers.PeerError):
            peers.iscsi_inq(running.url("user%wrong-secret@"))
        with pytest.raises(peers.PeerError):
            peers.iscsi_inq(running.url())
    finally:
        running.stop()


def serve(*args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EARMARK, "serve", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["{dir}/missing.img"], "does not exist"),
        (["{dir}/new.img", "--size", "1X"], "is not a size"),
        (["{dir}/odd.img"], "not a multiple"),
        (["{dir}/new.img", "--size", "1001"], "not a multiple"),
    ],
)
def test_serve_errors_are_one_line_with_the_fix(tmp_path: Path, args: list[str],
                                                words: str) -> None:
    (tmp_path / "odd.img").write_bytes(b"x" * 1000)
    done = serve(*[a.format(dir=tmp_path) for a in args], "--port", str(peers.free_port()))
    assert done.returncode == 2
    assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_serve_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = serve(str(tmp_path / "d.img"), "--size", "1M", "--port", str(port))
    assert done.returncode == 2 and "in use" in done.stderr and "--port" in done.stderr


def test_serve_prints_the_url_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = peers.free_port()
    proc = subprocess.Popen([*EARMARK, "serve", str(tmp_path / "disk.img"), "--size", "4M",
                             "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        url = proc.stdout.readline().strip()
        assert url == f"iscsi://127.0.0.1:{port}/iqn.2026-11.org.earmark:disk/0"
        assert peers.iscsi_readcapacity16(url).num_blocks == 8192
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert os.path.getsize(tmp_path / "disk.img") == 4 << 20

