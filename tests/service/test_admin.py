"""`earmark admin` against a running `earmark serve --admin-socket`: sessions listed, a LUN
added and removed, a LUN resized with CAPACITY DATA HAS CHANGED for its open session."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import earmark
from earmark.scsi.sense import ScsiError, SenseKey
from tests.service.serving import serve
from tests.service.test_metrics import scrape, total
from tools.peers import free_port

pytestmark = pytest.mark.tcp


def admin(sock: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "earmark.cli", "admin", "--socket", str(sock),
                           "--json", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_admin_lists_sessions_adds_removes_and_resizes_luns(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    metrics_port = free_port()
    with serve(str(tmp_path / "d.img"), "--size", "1M", "--port", str(free_port()),
               "--admin-socket", str(sock), "--metrics", f"127.0.0.1:{metrics_port}") as t:
        metrics = t.read_until("metrics at").split()[-1]
        url = t.read_until("iscsi://").strip()
        iqn = url.split("/")[3]
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        with earmark.open_sync(url, initiator_name="iqn.2026-11.org.earmark:admin-test") as dev:
            (row,) = admin(sock, "sessions")["connections"]
            assert row["state"] == "session" and row["target"] == iqn
            assert row["initiator"] == "iqn.2026-11.org.earmark:admin-test"
            assert row["luns"] == [0]

            resized = admin(sock, "resize-lun", iqn, "0", "2M")
            assert resized == {"ok": True, "size": 2 << 20, "sessions_told": 1}
            # The open session's next command meets the unit attention (the initiator
            # sends it again, as for any UNIT ATTENTION): one CHECK CONDITION counted.
            dev.read(0, 512)
            figures = scrape(metrics)
            assert total(figures, "earmark_target_command_failures_total",
                         status="CHECK_CONDITION") == 1
        with earmark.open_sync(url) as dev:
            assert dev.size == 2 << 20
        assert (tmp_path / "d.img").stat().st_size == 2 << 20

        added = admin(sock, "add-lun", iqn, "1", str(tmp_path / "e.img"), "--size", "1M")
        assert added["url"].endswith(f"{iqn}/1")
        with earmark.open_sync(added["url"]) as dev:
            dev.write(0, b"e" * 512)
        assert admin(sock, "remove-lun", iqn, "1") == {"ok": True,
                                                      "sessions_still_using_it": 0}
        with pytest.raises(ScsiError) as gone:
            earmark.open_sync(added["url"], max_attempts=1)
        assert gone.value.key == SenseKey.ILLEGAL_REQUEST
        refused = subprocess.run([sys.executable, "-m", "earmark.cli", "admin", "--socket",
                                  str(sock), "remove-lun", iqn, "7"],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "no LUN 7" in refused.stderr
        t.stop()
    assert not sock.exists()
    assert (tmp_path / "e.img").read_bytes()[:512] == b"e" * 512
