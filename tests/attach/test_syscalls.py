"""What one 4 KiB read at queue depth 1 costs the daemon in system calls: at that depth a
read is little more than its wake-ups and system calls, so a needless one is a cost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.attach import EarmarkAttach
from tools.serve import EarmarkServe

pytestmark = pytest.mark.tcp  # earmark serve listens on loopback

READS = 300


def read_calls(pid: int) -> int:
    """The read system calls ``pid`` made so far (read, readv...; failed ones count too)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/io has no syscr")


def test_a_read_at_queue_depth_1_reads_the_request_and_the_answer_only(
        tmp_path: Path) -> None:
    """Two reads a request: the FUSE request from /dev/fuse and the target's answer from
    the socket; none that finds /dev/fuse empty."""
    lun = tmp_path / "lun.img"
    lun.write_bytes(os.urandom(4 << 20))
    with EarmarkServe(lun) as serve, EarmarkAttach(serve.url, tmp_path / "mnt") as attached:
        fd = os.open(attached.disk, os.O_RDONLY)  # direct I/O: the daemon opens it so
        try:
            os.pread(fd, 4096, 0)  # the first read's lookups and opens are behind us
            before = read_calls(attached.pid)
            for i in range(READS):
                assert len(os.pread(fd, 4096, (i * 7919 % 1024) * 4096)) == 4096
            calls = read_calls(attached.pid) - before
        finally:
            os.close(fd)
        assert 2 * READS <= calls <= 2 * READS + 20  # a keepalive's few, at most
