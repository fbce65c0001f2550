"""No secret in anything `earmark serve` prints; secrets from the environment or a file only
its owner may read; JSON logs that parse, line by line."""

from __future__ import annotations

from pathlib import Path

import pytest

import earmark
from earmark.initiator.errors import AuthenticationFailedError
from earmark.service.secrets import SECRET_ENV
from tests.service.serving import json_lines, serve
from tools.peers import free_port

pytestmark = pytest.mark.tcp

SECRET = "never-print-me-0123"
USER = "svc-user"


def test_no_secret_in_anything_printed_and_every_json_line_parses(tmp_path: Path) -> None:
    with serve(str(tmp_path / "d.img"), "--size", "1M", "--port", str(free_port()),
               "--chap", USER, "--log-format", "json", "-v", env={SECRET_ENV: SECRET}) as t:
        (url,) = t.urls(1)
        assert url.startswith(f"iscsi://{USER}@127.0.0.1:")
        with earmark.open_sync(url, environ={"EARMARK_CHAP_SECRET": SECRET}) as dev:
            dev.write(0, b"s" * 512)
        with pytest.raises(AuthenticationFailedError):
            earmark.open_sync(url, environ={"EARMARK_CHAP_SECRET": "a-wrong-secret-99"},
                              max_attempts=1)
        printed = t.stop()
    assert SECRET not in printed
    records = json_lines(printed)
    events = [r["event"] for r in records]
    assert "serving" in events
    assert any(r["level"] == "warning" and "login refused" in r["event"] for r in records)
    sessions = [r for r in records if r["initiator"] is not None]
    assert sessions and all(r["session"].startswith("conn-") for r in sessions)


def test_the_config_may_name_a_secret_file_only_its_owner_reads(tmp_path: Path) -> None:
    secret_file = tmp_path / "alice.secret"
    secret_file.write_text(SECRET + "\n")
    config = tmp_path / "t.toml"
    config.write_text(f"""
[server]
port = {free_port()}
[[target]]
iqn = "iqn.2026-11.org.earmark:s"
chap = {{ user = "{USER}", secret_file = "alice.secret" }}
[[target.lun]]
file = "s.img"
size = "1M"
""")
    secret_file.chmod(0o640)
    with serve("--config", str(config)) as t:
        assert t.proc.wait(30) == 2
        printed = t.printed()
    assert f"chmod 600 {secret_file}" in printed and "may be read by others" in printed
    assert SECRET not in printed
    secret_file.chmod(0o600)
    with serve("--config", str(config), "--log-format", "json") as t:
        (url,) = t.urls(1)
        with earmark.open_sync(url, environ={"EARMARK_CHAP_SECRET": SECRET}) as dev:
            assert dev.size == 1 << 20
        printed = t.stop()
    assert SECRET not in printed
    json_lines(printed)


def test_a_chap_user_without_a_secret_anywhere_says_where_to_put_it(tmp_path: Path) -> None:
    with serve(str(tmp_path / "d.img"), "--size", "1M", "--chap", USER,
               env={SECRET_ENV: ""}) as t:
        assert t.proc.wait(30) == 2
        printed = t.printed()
    assert SECRET_ENV in printed and "--chap-secret-file" in printed
