"""`earmark attach --metrics`: the initiator's figures, scraped while a LUN is attached,
agree with what happened to it: a session up, a target restart counted as one reconnect,
nothing in flight once the I/O returned, the arena's books within its capacity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.service.test_metrics import scrape, total
from tools.attach import EarmarkAttach
from tools.peers import free_port
from tools.serve import EarmarkServe

pytestmark = pytest.mark.tcp

LUN_BYTES = 8 << 20
MEMORY = 16 << 20


def _write_and_sync(disk: Path, at: int, data: bytes) -> None:
    fd = os.open(disk, os.O_RDWR)
    try:
        os.pwrite(fd, data, at)
        os.fsync(fd)
        assert os.pread(fd, len(data), at) == data
    finally:
        os.close(fd)


def test_the_initiator_figures_count_a_reconnect_and_keep_the_arena_within_capacity(
        tmp_path: Path) -> None:
    lun = tmp_path / "lun.img"
    lun.write_bytes(bytes(LUN_BYTES))
    port, metrics = free_port(), free_port()
    url = f"http://127.0.0.1:{metrics}/metrics"
    serve = EarmarkServe(lun, port=port).start()
    try:
        with EarmarkAttach(serve.url, tmp_path / "mnt", "--memory", str(MEMORY),
                           "--metrics", f"127.0.0.1:{metrics}") as attached:
            _write_and_sync(attached.disk, 0, os.urandom(1 << 20))
            before = scrape(url)
            assert total(before, "earmark_initiator_connected") == 1
            assert total(before, "earmark_initiator_reconnects_total") == 0
            assert total(before, "earmark_initiator_commands_in_flight") == 0
            assert total(before, "earmark_initiator_fuse_requests_in_flight") == 0
            assert total(before, "earmark_initiator_arena_capacity_bytes") == MEMORY
            assert 0 < total(before, "earmark_initiator_arena_high_water_bytes") <= MEMORY
            assert 0 < total(before, "earmark_initiator_arena_level_reserved_bytes") <= MEMORY

            serve.kill()
            serve = EarmarkServe(lun, port=port).start()
            _write_and_sync(attached.disk, 1 << 20, os.urandom(1 << 20))  # over a new session
            after = scrape(url)
            assert total(after, "earmark_initiator_reconnects_total") == 1
            assert total(after, "earmark_initiator_connected") == 1
            assert total(after, "earmark_initiator_commands_in_flight") == 0
            assert attached.stop() == 0
    finally:
        serve.stop()
