"""The embedded target's public API: the README's fixture runs as printed, and a target
serves LUNs from memory and from files."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

import earmark
from earmark.scsi.sense import ScsiError, SenseKey
from tests.test_readme import README

pytestmark = pytest.mark.tcp


def test_the_readme_fixture_runs_as_printed(tmp_path: Path) -> None:
    section = README.read_text().split("### In a test suite", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "the test-suite section lost its example"
    (tmp_path / "test_example.py").write_text(code.group(1))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         str(tmp_path / "test_example.py")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_a_background_target_serves_memory_and_a_file(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"f" * 4096)
    with earmark.serve_in_background(1 << 20, image) as target:
        assert target.url == target.urls[0] and len(target.urls) == 2
        with earmark.open_sync(target.urls[1]) as dev:
            assert dev.read(0, 512) == b"f" * 512
            dev.write(512, b"w" * 512)
        with earmark.open_sync(target.urls[0]) as dev:
            assert dev.read(0, 512) == bytes(512)
    assert image.read_bytes()[512:1024] == b"w" * 512


def test_a_readonly_file_lun_refuses_writes(tmp_path: Path) -> None:
    image = tmp_path / "ro.img"
    image.write_bytes(bytes(4096))
    with earmark.serve_in_background(image, readonly=True) as target, \
            earmark.open_sync(target.url) as dev, pytest.raises(ScsiError) as refused:
        dev.write(0, b"x" * 512)
    assert (refused.value.key, refused.value.asc) == (SenseKey.DATA_PROTECT, 0x27)
    assert image.read_bytes() == bytes(4096)


def test_an_async_target_shares_the_running_loop() -> None:
    async def main() -> bytes:
        async with earmark.Target(2 << 20) as target, earmark.open(target.url) as dev:
            assert target.server.loop is asyncio.get_running_loop()
            await dev.write(0, b"a" * 512)
            return await dev.read(0, 512)

    assert asyncio.run(main()) == b"a" * 512
