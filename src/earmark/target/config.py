"""`earmark serve --config FILE.toml`: several targets, LUNs, CHAP secrets, ACLs, one portal.

    [server]
    address = "127.0.0.1"        # default 127.0.0.1
    port = 3260                  # default 3260
    memory = "64MiB"             # the target's arena
    policy = "reserve"           # or "none"
    login_timeout = 15           # seconds a connection may take to log in
    nop_interval = 10            # ping an initiator silent this long (seconds) with NOP-In
    nop_timeout = 30             # and close its connection if the ping is not answered
    max_connections = 2000       # default: sized from memory

    [[target]]
    iqn = "iqn.2026-11.org.example:disk1"
    alias = "scratch"                                  # optional
    chap = { user = "alice", secret = "s3cret-12chars" }  # optional: initiators log in with it
    # (or secret_file = "alice.secret": its first line, a file only its owner may read)
    mutual = { user = "disk1", secret = "other-secret" }  # optional: we prove ourselves too
    initiators = ["iqn.1993-08.org.debian:01:host1"]   # optional ACL; absent = anyone

    [[target.lun]]
    lun = 0                      # default: position in the list
    file = "disk1.img"           # relative to the config file
    size = "1G"                  # optional: create the file with this size if missing
    readonly = true              # optional: writes answer DATA PROTECT / WRITE PROTECTED
    removable = true             # optional: a removable medium (RMB; START STOP UNIT ejects it)

The file is checked whole before anything starts: a mistake is one line that
names the file, the place and the fix (an unknown key says which keys exist).
`earmark serve FILE` with flags is the same configuration with one target and one
LUN (:func:`from_options`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from earmark.service.secrets import SECRET_ENV, SecretFileError, read_secret_file
from earmark.units import SizeError, parse_size


class ConfigError(ValueError):
    """The config file or the command line is wrong; the message names the place and
    the fix."""


@dataclass(frozen=True, slots=True)
class LunConfig:
    lun: int
    file: Path
    size: int | None
    readonly: bool = False
    removable: bool = False


@dataclass(frozen=True, slots=True)
class TargetConfig:
    iqn: str
    alias: str
    chap: tuple[str, str] | None
    mutual: tuple[str, str] | None
    initiators: frozenset[str] | None
    luns: tuple[LunConfig, ...]


@dataclass(frozen=True, slots=True)
class ServeConfig:
    address: str
    port: int
    memory: int
    policy: str
    targets: tuple[TargetConfig, ...]
    login_timeout: float = 15.0
    max_connections: int | None = None
    nop_interval: float = 10.0
    nop_timeout: float = 30.0


DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 3260
DEFAULT_MEMORY = "64MiB"
DEFAULT_POLICY = "reserve"
#: The target name `earmark serve FILE` gives FILE: this prefix and the file's stem.
IQN_PREFIX = "iqn.2026-11.org.earmark:"

_SERVER_KEYS = {"address", "port", "memory", "policy", "login_timeout", "max_connections",
                "nop_interval", "nop_timeout"}
_TARGET_KEYS = {"iqn", "alias", "chap", "mutual", "initiators", "lun"}
_LUN_KEYS = {"lun", "file", "size", "readonly", "removable"}
_CRED_KEYS = {"user", "secret", "secret_file"}
POLICIES = ("reserve", "none")


def load(path: Path) -> ServeConfig:
    import tomllib  # here, not at the top: most targets have no file, and it stays resident

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config {path} cannot be read: {exc.strerror}") from None
    return parse(data, path)


def parse(data: Mapping[str, Any], path: Path) -> ServeConfig:
    where = _Where(path)
    _known(data, {"server", "target"}, where, "the top level")
    server = _table(data.get("server", {}), where, "[server]")
    _known(server, _SERVER_KEYS, where, "[server]")
    address = _str(server.get("address", DEFAULT_ADDRESS), where, "[server] address")
    port = server.get("port", DEFAULT_PORT)
    if not isinstance(port, int) or not 0 < port < 65536:
        raise where.error(f"[server] port {port!r} is not a TCP port: use 1-65535")
    memory = _size(server.get("memory", DEFAULT_MEMORY), where, "[server] memory")
    policy = _str(server.get("policy", DEFAULT_POLICY), where, "[server] policy")
    if policy not in POLICIES:
        raise where.error(f"[server] policy {policy!r} is unknown: use one of {POLICIES}")
    login_timeout, nop_interval, nop_timeout = (
        _seconds(server.get(key, default), where, f"[server] {key}")
        for key, default in (("login_timeout", 15.0), ("nop_interval", 10.0),
                             ("nop_timeout", 30.0)))
    max_connections = server.get("max_connections")
    if max_connections is not None and (isinstance(max_connections, bool) or not isinstance(
            max_connections, int) or max_connections < 1):
        raise where.error(f"[server] max_connections {max_connections!r} must be a whole "
                          "number above 0")
    raw_targets = data.get("target")
    if not isinstance(raw_targets, list) or not raw_targets:
        raise where.error("no [[target]] is defined: add at least one with an iqn and a lun")
    targets = tuple(_target(t, i, where) for i, t in enumerate(raw_targets))
    seen: set[str] = set()
    for target in targets:
        if target.iqn in seen:
            raise where.error(f"target {target.iqn} is defined twice")
        seen.add(target.iqn)
    return ServeConfig(address, port, memory, policy, targets, login_timeout,
                       max_connections, nop_interval, nop_timeout)


def from_options(
    file: Path | None,
    config: Path | None,
    *,
    size: str | None = None,
    address: str | None = None,
    port: int | None = None,
    memory: str | None = None,
    policy: str | None = None,
    chap: str | None = None,
    chap_secret: str | None = None,
    readonly: bool = False,
    removable: bool = False,
    login_timeout: float | None = None,
    max_connections: int | None = None,
    nop_interval: float | None = None,
    nop_timeout: float | None = None,
) -> ServeConfig:
    """`earmark serve`'s command line as a config: FILE is one target with one LUN;
    --config reads the file, and the flags given override its [server] table (and
    --readonly and --removable apply to every LUN of it). `--chap USER` alone takes `chap_secret`
    (from the environment or a file: argv shows in every process listing)."""
    if (file is None) == (config is None):
        raise ConfigError("give either FILE (one LUN) or --config FILE.toml, not both or neither")
    if config is not None:
        cfg = load(config)
        if address is not None:
            cfg = replace(cfg, address=address)
        if port is not None:
            cfg = replace(cfg, port=port)
        if memory is not None:
            cfg = replace(cfg, memory=parse_size(memory, "--memory"))
        if policy is not None:
            cfg = replace(cfg, policy=policy)
        if readonly or removable:
            cfg = replace(cfg, targets=tuple(
                replace(t, luns=tuple(replace(lun, readonly=lun.readonly or readonly,
                                              removable=lun.removable or removable)
                                      for lun in t.luns))
                for t in cfg.targets))
    else:
        assert file is not None
        credentials = None
        if chap is not None:
            user, sep, secret = chap.partition(":")
            if not sep:
                secret = chap_secret or ""
            if not user or not secret:  # never echo it: it may hold the secret
                raise ConfigError(f"--chap must be USER:SECRET, or USER with the secret in "
                                  f"${SECRET_ENV} or --chap-secret-file: both non-empty")
            credentials = (user, secret)
        lun = LunConfig(0, file, parse_size(size, "--size") if size is not None else None,
                        readonly, removable)
        target = TargetConfig(target_iqn(file), "", credentials, None, None, (lun,))
        cfg = ServeConfig(address or DEFAULT_ADDRESS, DEFAULT_PORT if port is None else port,
                          parse_size(memory or DEFAULT_MEMORY, "--memory"),
                          policy or DEFAULT_POLICY, (target,))
    cfg = replace(cfg, login_timeout=_flag_seconds("--login-timeout", login_timeout,
                                                   cfg.login_timeout),
                  nop_interval=_flag_seconds("--nop-interval", nop_interval, cfg.nop_interval),
                  nop_timeout=_flag_seconds("--nop-timeout", nop_timeout, cfg.nop_timeout))
    if max_connections is not None:
        if max_connections < 1:
            raise ConfigError(f"--max-connections {max_connections} must be at least 1")
        cfg = replace(cfg, max_connections=max_connections)
    if not 0 < cfg.port < 65536:
        raise ConfigError(f"--port {cfg.port} is not a TCP port: use 1-65535")
    return cfg


def target_iqn(path: Path) -> str:
    stem = re.sub(r"[^a-z0-9.-]+", "-", path.stem.lower()).strip("-.") or "disk"
    return IQN_PREFIX + stem


def _target(raw: object, index: int, where: _Where) -> TargetConfig:
    place = f"[[target]] #{index + 1}"
    table = _table(raw, where, place)
    _known(table, _TARGET_KEYS, where, place)
    iqn = _str(table.get("iqn"), where, f"{place} iqn")
    if not iqn.startswith(("iqn.", "eui.", "naa.")):
        raise where.error(
            f"{place} iqn {iqn!r} is not an iSCSI name: write iqn.YYYY-MM.domain:name"
        )
    place = f"target {iqn}"
    alias = _str(table.get("alias", ""), where, f"{place} alias")
    chap = _credentials(table.get("chap"), where, f"{place} chap")
    mutual = _credentials(table.get("mutual"), where, f"{place} mutual")
    if mutual is not None and chap is None:
        raise where.error(f"{place} has mutual but no chap: mutual CHAP needs both")
    initiators = None
    if "initiators" in table:
        names = table["initiators"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise where.error(f"{place} initiators must be a list of initiator names")
        initiators = frozenset(names)
    raw_luns = table.get("lun")
    if not isinstance(raw_luns, list) or not raw_luns:
        raise where.error(f"{place} has no [[target.lun]]: give it at least one with a file")
    luns = tuple(_lun(lun, i, where, place) for i, lun in enumerate(raw_luns))
    numbers = [lun.lun for lun in luns]
    if len(set(numbers)) != len(numbers):
        raise where.error(f"{place} uses a LUN number twice: {sorted(numbers)}")
    return TargetConfig(iqn, alias, chap, mutual, initiators, luns)


def _lun(raw: object, index: int, where: _Where, target: str) -> LunConfig:
    place = f"{target} lun #{index + 1}"
    table = _table(raw, where, place)
    _known(table, _LUN_KEYS, where, place)
    number = table.get("lun", index)
    if not isinstance(number, int) or not 0 <= number < 16384:
        raise where.error(f"{place} lun {number!r} must be a number from 0 to 16383")
    file = Path(_str(table.get("file"), where, f"{place} file"))
    if not file.is_absolute():
        file = where.path.parent / file
    size = _size(table["size"], where, f"{place} size") if "size" in table else None
    flags = {key: table.get(key, False) for key in ("readonly", "removable")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise where.error(f"{place} {key} {value!r} must be true or false")
    return LunConfig(number, file, size, flags["readonly"], flags["removable"])


class _Where:
    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"config {self.path}: {message}")


def _known(table: Mapping[str, Any], keys: set[str], where: _Where, place: str) -> None:
    for key in table:
        if key not in keys:
            near = difflib.get_close_matches(key, sorted(keys), n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known keys: {sorted(keys)}"
            raise where.error(f"unknown key {key!r} in {place}: {hint}")


def _table(raw: object, where: _Where, place: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise where.error(f"{place} must be a table")
    return raw


def _str(raw: object, where: _Where, place: str) -> str:
    if not isinstance(raw, str) or (not raw and not place.endswith("alias")):
        raise where.error(f"{place} must be a non-empty string")
    return raw


def _size(raw: object, where: _Where, place: str) -> int:
    if isinstance(raw, int) and raw > 0:
        return raw
    try:
        return parse_size(str(raw), place)
    except SizeError as exc:
        raise where.error(str(exc)) from None


def _flag_seconds(flag: str, value: float | None, otherwise: float) -> float:
    if value is None:
        return otherwise
    if not value > 0:
        raise ConfigError(f"{flag} {value:g} must be above 0 seconds")
    return value


def _seconds(raw: object, where: _Where, place: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise where.error(f"{place} {raw!r} must be a number of seconds above 0")
    return float(raw)


def _credentials(raw: object, where: _Where, place: str) -> tuple[str, str] | None:
    if raw is None:
        return None
    table = _table(raw, where, place)
    _known(table, _CRED_KEYS, where, place)
    user = _str(table.get("user"), where, f"{place} user")
    if ("secret" in table) == ("secret_file" in table):
        raise where.error(f"{place} needs either secret or secret_file, not both or neither")
    if "secret" in table:
        return user, _str(table["secret"], where, f"{place} secret")
    file = Path(_str(table["secret_file"], where, f"{place} secret_file"))
    try:
        return user, read_secret_file(file if file.is_absolute() else where.path.parent / file)
    except SecretFileError as exc:
        raise where.error(f"{place}: {exc}") from None
