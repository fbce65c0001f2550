"""`earmark serve --config`: the TOML format, its errors, and a served config end to end."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import earmark
from earmark.initiator.errors import InitiatorError
from earmark.target import build
from earmark.target.backing import MemoryBacking
from earmark.target.config import ConfigError, from_options, load
from earmark.target.session import AdmissionPolicy
from tools import peers

GOOD = """
[server]
port = 3999
memory = "32MiB"

[[target]]
iqn = "iqn.2026-11.org.earmark:one"
chap = { user = "alice", secret = "alice-secret-1" }
initiators = ["iqn.2026-11.org.earmark:allowed"]

[[target.lun]]
file = "one-a.img"
size = "4MiB"

[[target.lun]]
lun = 5
file = "one-b.img"
size = "2MiB"

[[target]]
iqn = "iqn.2026-11.org.earmark:two"

[[target.lun]]
file = "two.img"
size = "1MiB"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "earmark.toml"
    path.write_text(text)
    return path


def test_a_good_config_reads_whole(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, GOOD))
    assert (cfg.address, cfg.port, cfg.memory, cfg.policy) == ("127.0.0.1", 3999, 32 << 20,
                                                              "reserve")
    one, two = cfg.targets
    assert one.chap == ("alice", "alice-secret-1") and one.mutual is None
    assert one.initiators == frozenset({"iqn.2026-11.org.earmark:allowed"})
    assert [(lun.lun, lun.file.name, lun.size) for lun in one.luns] == [
        (0, "one-a.img", 4 << 20), (5, "one-b.img", 2 << 20)]
    assert one.luns[0].file.parent == tmp_path, "LUN files are relative to the config"
    assert two.initiators is None and two.chap is None


@pytest.mark.parametrize(("text", "message"), [
    (GOOD.replace("port = 3999", "prot = 3999"),
     "unknown key 'prot' in [server]: did you mean 'port'?"),
    (GOOD.replace('size = "4MiB"', 'size = "four"'), "size 'four' is not a size"),
    (GOOD.replace("lun = 5", "lun = 0"), "uses a LUN number twice"),
    (GOOD.replace('chap = { user = "alice", secret = "alice-secret-1" }',
                  'mutual = { user = "t", secret = "target-secret" }'), "mutual but no chap"),
    ("[server]\nport = 1\n", "no [[target]] is defined"),
    (GOOD.replace('memory = "32MiB"', 'policy = "yolo"'), "policy 'yolo' is unknown"),
    ("[server\n", "is not valid TOML"),
    (GOOD.replace('iqn = "iqn.2026-11.org.earmark:two"', 'iqn = "two"'), "is not an iSCSI name"),
    (GOOD.replace('size = "2MiB"', 'size = "2MiB"\nreadonly = "yes"'),
     "readonly 'yes' must be true or false"),
    (GOOD.replace("port = 3999", "port = 3999\nlogin_timeout = 0"),
     "[server] login_timeout 0 must be a number of seconds above 0"),
    (GOOD.replace("port = 3999", "port = 3999\nnop_timeout = true"),
     "[server] nop_timeout True must be a number of seconds above 0"),
    (GOOD.replace("port = 3999", "port = 3999\nmax_connections = 0"),
     "[server] max_connections 0 must be a whole number above 0"),
])
def test_mistakes_are_one_line_with_the_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert message in str(info.value)
    assert str(info.value).startswith(f"config {tmp_path / 'earmark.toml'}")


def test_readonly_is_per_lun_in_the_file_and_for_every_lun_on_the_command_line(
        tmp_path: Path) -> None:
    text = GOOD.replace('size = "2MiB"', 'size = "2MiB"\nreadonly = true')
    cfg = load(write(tmp_path, text))
    assert [[lun.readonly for lun in t.luns] for t in cfg.targets] == [[False, True], [False]]
    cfg = from_options(None, write(tmp_path, GOOD), readonly=True)
    assert [[lun.readonly for lun in t.luns] for t in cfg.targets] == [[True, True], [True]]
    (target,) = from_options(tmp_path / "d.img", None, readonly=True).targets
    assert [lun.readonly for lun in target.luns] == [True]


def test_login_and_idle_limits_come_from_the_file_and_the_flags_override_them(
        tmp_path: Path) -> None:
    text = GOOD.replace("port = 3999", "port = 3999\nlogin_timeout = 5\nnop_interval = 2.5\n"
                        "max_connections = 300")
    cfg = load(write(tmp_path, text))
    assert (cfg.login_timeout, cfg.nop_interval, cfg.nop_timeout, cfg.max_connections) == (
        5.0, 2.5, 30.0, 300)
    cfg = from_options(None, write(tmp_path, text), login_timeout=1, nop_timeout=4,
                       max_connections=7)
    assert (cfg.login_timeout, cfg.nop_interval, cfg.nop_timeout, cfg.max_connections) == (
        1.0, 2.5, 4.0, 7)
    setup = build.from_config(cfg)
    assert (setup.limits.login_timeout, setup.limits.max_connections) == (1.0, 7)
    assert (setup.config.nop_interval, setup.config.nop_timeout) == (2.5, 4.0)
    for spec in setup.targets:
        for unit in spec.units.values():
            unit.backing.close()
    with pytest.raises(ConfigError, match="--nop-interval -1 must be above 0 seconds"):
        from_options(tmp_path / "d.img", None, nop_interval=-1)


def test_a_bad_chap_flag_does_not_echo_what_may_be_the_secret(tmp_path: Path) -> None:
    for value in ("s3cret-without-user", ":s3cret-without-user", "user-without-secret:"):
        with pytest.raises(ConfigError) as info:
            from_options(tmp_path / "d.img", None, chap=value)
        assert value.strip(":") not in str(info.value)
        assert "USER:SECRET" in str(info.value)


def test_the_command_line_is_one_target_with_one_lun(tmp_path: Path) -> None:
    cfg = from_options(tmp_path / "My Disk.img", None, size="1M", chap="bob:bob-secret-123")
    (target,) = cfg.targets
    assert target.iqn == "iqn.2026-11.org.earmark:my-disk" and target.chap == ("bob",
                                                                            "bob-secret-123")
    assert [(lun.lun, lun.size) for lun in target.luns] == [(0, 1 << 20)]
    assert (cfg.address, cfg.port, cfg.memory, cfg.policy) == ("127.0.0.1", 3260, 64 << 20,
                                                              "reserve")


def test_flags_override_the_config_files_server_table(tmp_path: Path) -> None:
    cfg = from_options(None, write(tmp_path, GOOD), port=4000, memory="8MiB", policy="none",
                       address="0.0.0.0")
    assert (cfg.address, cfg.port, cfg.memory, cfg.policy) == ("0.0.0.0", 4000, 8 << 20, "none")
    assert len(cfg.targets) == 2


@pytest.mark.parametrize(("file", "config", "flags", "message"), [
    (None, None, {}, "give either FILE"),
    ("d.img", "earmark.toml", {}, "not both or neither"),
    ("d.img", None, {"chap": "nocolon"}, "must be USER:SECRET"),
    ("d.img", None, {"port": 70000}, "is not a TCP port"),
])
def test_command_line_mistakes_say_the_fix(tmp_path: Path, file: str | None, config: str | None,
                                           flags: dict[str, object], message: str) -> None:
    write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=message):
        from_options(None if file is None else tmp_path / file,
                     None if config is None else tmp_path / config, **flags)  # type: ignore[arg-type]


def test_the_embedded_target_serves_the_disk_earmark_serve_does(tmp_path: Path) -> None:
    """The tests run the embedded target: it must present the limits `earmark serve` does
    (WRITE ATOMIC up to one command buffer, WRITE SAME up to one transfer)."""
    setup = build.from_config(load(write(tmp_path, GOOD)))
    served = setup.targets[0].units[0].disk
    for spec in setup.targets:
        for unit in spec.units.values():
            unit.backing.close()
    embedded = build.one_lun(MemoryBacking(4 << 20), iqn="iqn.2026-11.org.earmark:e",
                             memory=16 << 20, policy=AdmissionPolicy.RESERVE, chap=None,
                             block_size=512, serial=served.serial).targets[0].units[0].disk
    assert embedded == served
    assert (served.max_atomic_blocks, served.max_write_same_blocks) == (512, 16384)
    assert (setup.address, setup.port, setup.arena.capacity) == ("127.0.0.1", 3999, 32 << 20)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[int]:
    port = peers.free_port()
    config = write(tmp_path, GOOD)
    proc = subprocess.Popen(
        [sys.executable, "-m", "earmark.cli", "serve", "--config", str(config), "--port",
         str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        urls = [proc.stdout.readline().strip() for _ in range(6)]
        assert sum(u.startswith("iscsi://") for u in urls) == 3, urls
        yield port
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0


@pytest.mark.peers
def test_serve_config_targets_luns_chap_and_acl(served: int) -> None:
    port = served
    # iscsi-ls logs in as libiscsi's own initiator name, which target one's ACL
    # does not admit: discovery does not even show it that target.
    listed = peers.iscsi_ls(f"iscsi://127.0.0.1:{port}")
    assert [t.iqn for t in listed] == ["iqn.2026-11.org.earmark:two"]
    two = peers.iscsi_readcapacity16(f"iscsi://127.0.0.1:{port}/iqn.2026-11.org.earmark:two/0")
    assert two.size_bytes == 1 << 20

    async def sizes(url: str, initiator: str) -> int:
        async with earmark.open(url, initiator_name=initiator, max_attempts=1) as dev:
            return dev.size

    one = f"iscsi://alice%alice-secret-1@127.0.0.1:{port}/iqn.2026-11.org.earmark:one"
    allowed = "iqn.2026-11.org.earmark:allowed"
    assert asyncio.run(sizes(one + "/5", allowed)) == 2 << 20
    assert asyncio.run(sizes(one + "/0", allowed)) == 4 << 20
    with pytest.raises(InitiatorError, match=r"0x0202"):
        asyncio.run(sizes(one + "/0", "iqn.2026-11.org.earmark:stranger"))


@pytest.mark.tcp
def test_ls_lists_every_target_and_reports_the_one_that_refuses(tmp_path: Path) -> None:
    """Target one wants CHAP, which `earmark ls` was not given: its login is refused,
    said in one line, and target two is still listed with its LUN; exit code 2."""
    port = peers.free_port()
    config = write(tmp_path, GOOD.replace(
        'initiators = ["iqn.2026-11.org.earmark:allowed"]\n', ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "earmark.cli", "serve", "--config", str(config), "--port",
         str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert sum(proc.stdout.readline().startswith("iscsi://") for _ in range(6)) == 3
        done = subprocess.run([sys.executable, "-m", "earmark.cli", "ls",
                               f"iscsi://127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60, check=False)
    finally:
        proc.terminate()
        proc.wait(30)
    assert done.returncode == 2, done.stderr
    assert "Target: iqn.2026-11.org.earmark:one" in done.stdout
    assert "Target: iqn.2026-11.org.earmark:two" in done.stdout
    assert "LUN 0: disk" in done.stdout.split("earmark:two")[1]
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and "iqn.2026-11.org.earmark:one" in errors[0]
    assert "Traceback" not in done.stderr
