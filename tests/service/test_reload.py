"""SIGHUP: a LUN added, a target removed (new logins refused, its session drains), a CHAP
secret changed (for new logins), all without a restart."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

import earmark
from earmark.initiator.errors import AuthenticationFailedError, InitiatorError
from tests.service.serving import json_lines, serve
from tools.peers import free_port

pytestmark = pytest.mark.tcp

A = "iqn.2026-11.org.earmark:a"
B = "iqn.2026-11.org.earmark:b"


def config(port: int, secret: str, *, a_luns: int, with_b: bool) -> str:
    text = f"""
[server]
port = {port}

[[target]]
iqn = "{A}"
chap = {{ user = "alice", secret = "{secret}" }}
"""
    for n in range(a_luns):
        text += f'[[target.lun]]\nfile = "a{n}.img"\nsize = "1M"\n'
    if with_b:
        text += f'[[target]]\niqn = "{B}"\n[[target.lun]]\nfile = "b.img"\nsize = "1M"\n'
    return text


def test_sighup_adds_a_lun_removes_a_target_and_changes_a_secret(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "targets.toml"
    path.write_text(config(port, "first-secret-01", a_luns=1, with_b=True))
    with serve("--config", str(path), "--log-format", "json", "-v") as t:
        a0, b0 = t.urls(2)
        with earmark.open_sync(b0) as kept:
            kept.write(0, b"b" * 512)
            path.write_text(config(port, "second-secret-02", a_luns=2, with_b=False))
            t.proc.send_signal(signal.SIGHUP)
            fields = json.loads(t.read_until('"reloaded"'))["fields"]
            assert fields["added"] == [f"{A} LUN 1"] and fields["removed"] == [f"{B} LUN 0"]
            assert fields["login_changed"] == [A]
            (a1,) = t.urls(1)
            assert a1.endswith(f"{A}/1")
            with pytest.raises(AuthenticationFailedError):
                earmark.open_sync(a0, environ={"EARMARK_CHAP_SECRET": "first-secret-01"},
                                  max_attempts=1)
            with earmark.open_sync(a1, environ={"EARMARK_CHAP_SECRET": "second-secret-02"}
                                   ) as dev:
                assert dev.size == 1 << 20
            with pytest.raises(InitiatorError):
                earmark.open_sync(b0, max_attempts=1)
            # The session that had target B before the reload drains: it still works.
            assert kept.read(0, 512) == b"b" * 512
        path.write_text("this is not TOML")
        t.proc.send_signal(signal.SIGHUP)
        t.wait_logged("still serving the previous")
        printed = t.stop()
    (failed,) = [r for r in json_lines(printed) if "still serving the previous" in r["event"]]
    assert failed["level"] == "error" and "not valid TOML" in failed["event"]
