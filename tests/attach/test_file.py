"""MOUNTPOINT/disk as a file: any byte range read and written (whole blocks or not, many
at once), fsync, a punched hole, and the LUN behind it holding exactly that."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tools.attach import EarmarkAttach
from tools.serve import EarmarkServe

LUN_BYTES = 8 << 20
pytestmark = pytest.mark.tcp  # earmark serve listens on loopback
_PUNCH_HOLE_KEEP_SIZE = 0x02 | 0x01


@pytest.fixture(params=[("--policy", "reserve"), ("--policy", "none"),
                        ("--policy", "reserve", "--poll", "0")],
                ids=["reserve", "none", "no-poll"])
def attached(tmp_path: Path,
             request: pytest.FixtureRequest) -> Iterator[tuple[EarmarkAttach, Path]]:
    """Under ``reserve`` requests come in buffers reserved before the mount; under
    ``none`` each gets one allocated as it comes; with ``--poll 0`` the loop never polls
    (by default it polls while a request waits for the target)."""
    lun = tmp_path / "lun.img"
    lun.write_bytes(os.urandom(LUN_BYTES))
    with EarmarkServe(lun) as serve, EarmarkAttach(serve.url, tmp_path / "mnt",
                                                   *request.param) as att:
        yield att, lun


def test_the_file_is_the_lun_byte_for_byte(attached: tuple[EarmarkAttach, Path]) -> None:
    att, lun = attached
    assert att.disk.stat().st_size == LUN_BYTES
    assert sorted(os.listdir(att.mountpoint)) == ["disk"]
    fd = os.open(att.disk, os.O_RDWR)
    try:
        assert os.pread(fd, LUN_BYTES, 0) == lun.read_bytes()
        os.pwrite(fd, b"a" * 1000, 100)  # inside one block
        os.pwrite(fd, b"b" * 5000, 4000)  # across blocks, neither edge whole
        os.pwrite(fd, b"c" * 65536, 1 << 20)  # whole blocks
        os.fsync(fd)  # SYNCHRONIZE CACHE
        assert os.pread(fd, 10, LUN_BYTES - 5) == lun.read_bytes()[-5:]  # cut at the end
        expect = bytearray(lun.read_bytes())
        expect[100:1100] = b"a" * 1000
        expect[4000:9000] = b"b" * 5000
        expect[1 << 20:(1 << 20) + 65536] = b"c" * 65536
        assert lun.read_bytes() == expect  # the target has them
        assert os.pread(fd, LUN_BYTES, 0) == expect
    finally:
        os.close(fd)


def test_reads_in_flight_together_each_get_their_bytes(
        attached: tuple[EarmarkAttach, Path]) -> None:
    att, lun = attached
    want = lun.read_bytes()
    fd = os.open(att.disk, os.O_RDONLY)
    try:
        spans = [((i * 7919 * 4096) % (LUN_BYTES - 65536), 4096 + i % 3 * 30000)
                 for i in range(400)]
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda span: os.pread(fd, span[1], span[0]), spans))
        assert [g == want[o:o + n] for g, (o, n) in zip(got, spans, strict=True)] == [True] * 400
    finally:
        os.close(fd)


def test_a_punched_hole_is_unmapped_and_reads_as_zeros(
        attached: tuple[EarmarkAttach, Path]) -> None:
    att, lun = attached
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    fd = os.open(att.disk, os.O_RDWR)
    try:
        start, length = 1000, (2 << 20) + 3000  # whole blocks inside, a part at each end
        assert libc.fallocate(fd, _PUNCH_HOLE_KEEP_SIZE, start, length) == 0, \
            os.strerror(ctypes.get_errno())
        assert os.pread(fd, length, start) == bytes(length)
        os.fsync(fd)
        assert lun.read_bytes()[start:start + length] == bytes(length)
        blocks = os.stat(lun).st_blocks * 512
        assert blocks <= LUN_BYTES - (2 << 20) + 8192  # freed (in its 4 KiB pages): UNMAP
    finally:
        os.close(fd)
