"""earmark's target against libiscsi's tools, and `earmark serve` as a user meets it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from earmark.runtime.embedded import EmbeddedTarget
from tests.targets import embedded_with
from tools import peers

IQN = "iqn.2026-11.org.earmark:test"
SIZE = 8 << 20
EARMARK = [sys.executable, "-m", "earmark.cli"]


def url(target: EmbeddedTarget, cred: str = "") -> str:
    return f"iscsi://{cred}127.0.0.1:{target.server.port}/{target.iqn}/0"


# The shared embedded target (tests/conftest.py), with this module's size, arena and IQN.
WITH_TARGET = embedded_with(SIZE, memory=16 << 20, iqn=IQN)


@pytest.mark.peers
@WITH_TARGET
def test_libiscsi_tools_see_the_disk(embedded_target: EmbeddedTarget) -> None:
    inq = peers.iscsi_inq(url(embedded_target))
    assert inq.is_disk and "EARMARK" in inq.vendor
    block_size, num_blocks = peers.iscsi_readcapacity16(url(embedded_target))
    assert (block_size, num_blocks) == (512, SIZE // 512)
    (found,) = peers.iscsi_ls(f"iscsi://127.0.0.1:{embedded_target.server.port}")
    assert found.iqn == IQN
    # Every connection gave its receive buffer and slots back.
    deadline = time.monotonic() + 5
    while embedded_target.server.arena.committed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert embedded_target.server.arena.committed == 0


@pytest.mark.peers
@WITH_TARGET
def test_iscsi_perf_reads_through_reserved_buffers(embedded_target: EmbeddedTarget) -> None:
    result = peers.iscsi_perf(url(embedded_target), blocks=8, queue_depth=8, seconds=1)
    assert result.iops > 0
    assert embedded_target.server.arena.high_water <= embedded_target.server.arena.capacity


@pytest.mark.peers
@embedded_with(SIZE, iqn=IQN, chap=("user", "secret-12345"))
def test_chap_right_secret_logs_in_and_wrong_one_is_refused(
    embedded_target: EmbeddedTarget,
) -> None:
    assert peers.iscsi_inq(url(embedded_target, "user%secret-12345@")).is_disk
    with pytest.raises(peers.PeerError):
        peers.iscsi_inq(url(embedded_target, "user%wrong-secret@"))
    with pytest.raises(peers.PeerError):
        peers.iscsi_inq(url(embedded_target))


def serve(*args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EARMARK, "serve", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.tcp  # free_port() binds
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


@pytest.mark.tcp
def test_serve_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = serve(str(tmp_path / "d.img"), "--size", "1M", "--port", str(port))
    assert done.returncode == 2 and "in use" in done.stderr and "--port" in done.stderr


@pytest.mark.peers
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

