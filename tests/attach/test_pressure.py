"""The kernel's writeback under a memory limit, served by a daemon that reserved its memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.pressure import pressure_run

pytestmark = pytest.mark.tcp  # earmark serve listens on loopback


def test_under_reserve_a_writer_past_its_cgroup_limit_completes_and_loses_nothing(
        tmp_path: Path) -> None:
    # 192 MiB of files through a 40 MiB cgroup that holds the writer, its dirty pages and
    # the daemon: the kernel must write back through the daemon to let the writer on.
    result = pressure_run("reserve", tmp_path, limit=40 << 20, files=12, mib=16,
                          options=("--memory", "2MiB", "--requests", "8"))
    assert result.outcome == "completed", result
    assert result.files_synced == 12
    assert result.peak_cgroup_bytes >= 39 << 20  # the limit was reached: the pressure was real
    assert result.oom_kills == 0
    assert result.fsck_clean
    assert result.lost_files == 0
    assert result.daemon_exit == 0
