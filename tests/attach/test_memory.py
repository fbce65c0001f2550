"""The daemon's memory, fixed before it serves: its arenas allocated and locked in RAM."""

from __future__ import annotations

from pathlib import Path

import pytest

from earmark.attach.daemon import SLOT_BYTES
from tools.attach import EarmarkAttach
from tools.serve import EarmarkServe

pytestmark = pytest.mark.tcp  # earmark serve listens on loopback


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {field}")


@pytest.mark.parametrize(("policy", "locked"), [("reserve", True), ("none", False)])
def test_under_reserve_every_page_is_locked_before_the_mount(
        tmp_path: Path, policy: str, locked: bool) -> None:
    lun = tmp_path / "lun.img"
    lun.write_bytes(bytes(1 << 20))
    with EarmarkServe(lun) as serve, EarmarkAttach(
            serve.url, tmp_path / "mnt", "--policy", policy, "--memory", "8MiB",
            "--requests", "8") as attached:
        arenas_kib = (8 << 10) + 9 * SLOT_BYTES // 1024
        vm_locked = status_kib(attached.pid, "VmLck")
        oom_adj = int(Path(f"/proc/{attached.pid}/oom_score_adj").read_text())
        if locked:
            assert vm_locked >= arenas_kib
            assert vm_locked >= status_kib(attached.pid, "VmRSS") * 0.9  # all of it, bar races
            # Never the OOM killer's choice, or it said why not (no CAP_SYS_RESOURCE).
            assert oom_adj == -1000 or "oom_score_adj -1000" in attached.stderr, attached.stderr
        else:
            assert vm_locked == 0 and oom_adj == 0
        assert attached.stop() == 0
