"""`earmark serve` as a user meets it: errors in one line, a port in use, the URL it
prints, a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import earmark
from earmark.scsi.sense import ScsiError, SenseKey
from tools import peers
from tools.serve import EarmarkServe

EARMARK = [sys.executable, "-m", "earmark.cli"]


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



@pytest.mark.tcp
def test_serve_readonly_answers_writes_with_write_protected_and_serves_reads(
        tmp_path: Path) -> None:
    lun = tmp_path / "ro.img"
    data = os.urandom(1 << 20)
    lun.write_bytes(data)

    async def go(url: str) -> None:
        async with earmark.open(url) as dev:
            assert await dev.read(4096, 4096) == data[4096:8192]
            with pytest.raises(ScsiError) as raised:
                await dev.write(0, bytes(4096))
            err = raised.value
            assert (err.key, err.asc, err.ascq) == (SenseKey.DATA_PROTECT, 0x27, 0x00)
            sense = bytearray(255)
            await dev.execute(bytes((0x1A, 0x08, 0x3F, 0, 255, 0)),  # MODE SENSE(6)
                              read_into=memoryview(sense))
            assert sense[2] & 0x80, "the mode header's WP bit is not set"

    with EarmarkServe(lun, "--readonly") as served:
        asyncio.run(go(served.url))
    assert lun.read_bytes() == data


@pytest.mark.parametrize(("value", "words"), [("2000", "is not 0 to 1000 microseconds"),
                                              ("fast", "is not a whole number of microseconds")])
def test_serve_refuses_a_poll_window_it_cannot_use(tmp_path: Path, value: str,
                                                   words: str) -> None:
    done = serve(str(tmp_path / "new.img"), "--size", "1M", "--poll", value)
    assert done.returncode == 2
    assert "argument --poll:" in done.stderr and words in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "new.img").exists()
