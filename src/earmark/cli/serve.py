"""`earmark serve FILE` (one LUN) or `earmark serve --config FILE.toml` (targets, LUNs,
CHAP, ACLs): an iSCSI target until SIGINT/SIGTERM; SIGHUP reloads the config file,
`--admin-socket` takes `earmark admin` requests, `--metrics` serves Prometheus figures.

Errors a user can meet (no such file, a size that is not whole blocks, a port in
use, a size that does not parse) end the command with one line on stderr that
says how to fix it, and exit status 2; a traceback would only bury the fix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import signal
import sys
from pathlib import Path

import earmark.cli.loops as loops
from earmark.cli.poll_flag import add_poll_flag
from earmark.runtime.server import TargetServer
from earmark.service import logs, secrets
from earmark.service.address import AddressError, parse_address
from earmark.service.admin import Admin
from earmark.service.portals import listen_also
from earmark.service.reload import Reloader, close_retired
from earmark.target import build
from earmark.target.backing import BackingError
from earmark.target.config import ConfigError, ServeConfig, from_options
from earmark.target.session import AdmissionPolicy
from earmark.target.unit import LogicalUnit
from earmark.units import SizeError

log = logging.getLogger("earmark.serve")


class UsageError(Exception):
    """A mistake on the command line or in the environment; the message is the fix."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a file as an iSCSI disk",
        description="Serve FILE as LUN 0 of an iSCSI target, admitting commands only "
                    "when the memory to complete them is reserved.",
    )
    p.add_argument("file", type=Path, nargs="?", help="the backing file (or block device)")
    p.add_argument("--config", type=Path, metavar="FILE.toml",
                   help="serve the targets, LUNs, CHAP secrets and ACLs of this file "
                        "(instead of FILE; see earmark.target.config for the format)")
    p.add_argument("--size", help="create FILE with this size first (e.g. 1G)")
    p.add_argument("--address", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 3260)")
    p.add_argument("--memory", help="the target's arena (default 64MiB)")
    p.add_argument("--policy", choices=[p.value for p in AdmissionPolicy],
                   help="admission: reserve (default) or none (allocate on demand)")
    p.add_argument("--chap", metavar="USER[:SECRET]",
                   help="require one-way CHAP with these credentials; give USER alone to take "
                        f"the secret from ${secrets.SECRET_ENV} or --chap-secret-file "
                        "(argv shows in every process listing)")
    p.add_argument("--chap-secret-file", type=Path, metavar="FILE",
                   help="the CHAP secret: FILE's first line (a file only its owner may read)")
    p.add_argument("--login-timeout", type=float, metavar="SECONDS",
                   help="close a connection that has not logged in by then (default 15)")
    p.add_argument("--max-connections", type=int, metavar="N",
                   help="refuse connections beyond N (default: sized from --memory)")
    p.add_argument("--nop-interval", type=float, metavar="SECONDS",
                   help="ping an initiator silent this long with NOP-In (default 10)")
    p.add_argument("--nop-timeout", type=float, metavar="SECONDS",
                   help="close its connection when the ping goes unanswered (default 30)")
    p.add_argument("--readonly", action="store_true",
                   help="serve the LUN(s) read-only: writes answer DATA PROTECT")
    p.add_argument("--removable", action="store_true",
                   help="serve the LUN(s) as removable media: START STOP UNIT ejects and loads")
    p.add_argument("--loop", choices=loops.LOOPS, default="auto",
                   help="event loop: uvloop if installed (auto, the default), or force one")
    add_poll_flag(p, POLL_US, "command")
    p.add_argument("-v", "--verbose", action="store_true", help="log every session")
    p.add_argument("--portal", action="append", default=[], metavar="ADDRESS:PORT",
                   help="listen on this portal too (repeatable): an initiator may log in "
                        "through each, to the same LUNs (multipath)")
    p.add_argument("--metrics", metavar="ADDRESS:PORT",
                   help="serve Prometheus metrics at http://ADDRESS:PORT/metrics")
    p.add_argument("--admin-socket", type=Path, metavar="PATH",
                   help="take `earmark admin` requests on this Unix socket (mode 0600)")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="logs on stderr as text (default) or one JSON object per line (the "
                        "URLs on stdout too)")


#: ``--poll``'s default: the target polls this many microseconds after each command and
#: answer (earmark.busy_poll). At queue depth 1 on a virtual machine it saves the
#: wake-up each command otherwise costs; it stops by itself when it does not pay.
POLL_US = 250

#: glibc's mallopt parameter for how many malloc arenas threads may spread over.
_M_ARENA_MAX = -8


def _one_malloc_arena() -> None:
    """Let the target's I/O threads share glibc's main malloc arena. They allocate little
    (an iovec list, a result), but each thread that mallocs would get an arena of its
    own, and that is resident memory outside the target's arena, in a process whose
    footprint is the arena plus what it cannot help. Elsewhere than glibc, nothing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1)


def run(args: argparse.Namespace) -> int:
    formatter = logs.configure(args.log_format == "json",
                               logging.INFO if args.verbose else logging.WARNING)
    _one_malloc_arena()
    try:
        cfg = _config(args)
        server = _build(cfg, args.poll)
        if formatter is not None:
            formatter.who = logs.connections_context(server.connections)
        loops.run(_serve(server, cfg, args), args.loop)
    except _MISTAKES as exc:
        if formatter is not None:
            log.error("earmark serve: %s", exc)
        else:
            print(f"earmark serve: {exc}", file=sys.stderr)
        return 2
    return 0


#: What a user can get wrong: one line with the fix, exit status 2 (or, on a reload, a
#: line saying the previous configuration is still served).
_MISTAKES = (UsageError, loops.LoopUnavailableError, BackingError, ConfigError, SizeError,
             build.SetupError, secrets.SecretFileError, AddressError)


def _config(args: argparse.Namespace) -> ServeConfig:
    for text, flag in ((args.metrics, "--metrics"), *((p, "--portal") for p in args.portal)):
        if text is not None:
            parse_address(text, flag)  # a mistake there is found before anything starts
    chap_secret = secrets.flag_secret(args.chap_secret_file, os.environ)
    return from_options(args.file, args.config, size=args.size, address=args.address,
                        port=args.port, memory=args.memory, policy=args.policy, chap=args.chap,
                        chap_secret=chap_secret,
                        readonly=args.readonly, removable=args.removable,
                        login_timeout=args.login_timeout,
                        max_connections=args.max_connections, nop_interval=args.nop_interval,
                        nop_timeout=args.nop_timeout)


def _build(cfg: ServeConfig, poll_s: float) -> TargetServer:
    server = TargetServer(build.from_config(cfg), poll_s=poll_s)
    portal = server.portal
    need = portal.recv_bytes + sum(portal.slot_claim.values())
    if cfg.memory < need:
        raise UsageError(f"memory {cfg.memory} B cannot hold one connection ({need} B): "
                         "give it at least 1MiB")
    return server


async def _serve(server: TargetServer, cfg: ServeConfig, args: argparse.Namespace) -> None:
    try:
        await server.start()
    except OSError as exc:
        where = f"{server.address}:{server.port}"
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {server.port} on {server.address} is in use: pick another "
                             "with --port") from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
            raise UsageError(f"cannot listen on {where}: {exc.strerror}: "
                             "check --address and --port") from None
        raise UsageError(f"cannot listen on {where}: {exc}") from None
    json_format = args.log_format == "json"
    retired: list[LogicalUnit] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reloader = Reloader(server, lambda: _config(args), cfg, retired)
    loop.add_signal_handler(signal.SIGHUP, _reload, reloader, args, json_format)
    metrics = admin = None
    listeners: list[asyncio.Server] = []
    try:
        for portal in args.portal:
            try:
                listeners.append(await listen_also(server, *parse_address(portal, "--portal")))
            except OSError as exc:
                raise UsageError(f"cannot listen on --portal {portal}: {exc.strerror}: pick "
                                 "another ADDRESS:PORT") from None
        if args.metrics is not None:
            # prometheus-client: if asked
            from earmark.service.metrics import MetricsServer, TargetCollector

            try:
                metrics = MetricsServer(TargetCollector(server),
                                        *parse_address(args.metrics, "--metrics"))
            except OSError as exc:
                raise UsageError(f"cannot serve metrics on {args.metrics}: {exc.strerror}: "
                                 "pick another --metrics ADDRESS:PORT") from None
        if args.admin_socket is not None:
            admin = Admin(server, retired)
            try:
                await admin.start(args.admin_socket)
            except OSError as exc:
                raise UsageError(f"cannot listen on {args.admin_socket}: {exc.strerror}: "
                                 "pick another --admin-socket PATH") from None
        if metrics is not None:
            _say(json_format, "metrics", f"metrics at {metrics.url}", url=metrics.url)
        for extra in server.portal.network_portals[1:]:
            where = f"{extra.host}:{extra.port}"
            _say(json_format, "portal", f"also listening on {where}", portal=where)
        _announce(server, json_format)
        await stop.wait()
    finally:
        for listener in listeners:
            listener.close()
        if admin is not None:
            await admin.stop()
        if metrics is not None:
            metrics.close()
        await server.stop()
        close_retired(retired)


def _reload(reloader: Reloader, args: argparse.Namespace, json_format: bool) -> None:
    """SIGHUP: serve what the config file says now (see earmark.service.reload)."""
    if args.config is None:
        log.warning("SIGHUP: nothing to reload (it reloads --config FILE.toml)")
        return
    try:
        changes = reloader.reload()
    except _MISTAKES as exc:
        log.error("reload failed, still serving the previous configuration: %s", exc)
        return
    if changes.needs_restart:
        log.warning("reload: [server] %s changed, which takes a restart",
                    ", ".join(changes.needs_restart))
    _say(json_format, "reloaded",
         f"reloaded {args.config}: added {changes.added or 'nothing'}, removed "
         f"{changes.removed or 'nothing'}, login settings changed for "
         f"{changes.login_changed or 'none'}",
         added=changes.added, removed=changes.removed, login_changed=changes.login_changed)
    _announce(reloader.server, json_format, only=set(changes.added))


def _say(json_format: bool, event: str, text: str, **fields: object) -> None:
    """A line on stdout for whoever started the target: text, or a JSON log line."""
    print(logs.line("info", event, fields=fields) if json_format else text, flush=True)


def _announce(server: TargetServer, json_format: bool, only: set[str] | None = None) -> None:
    """What is served where, on stdout (`only` these "IQN LUN n" after a reload): each
    LUN's URL, with the CHAP user but never the secret (the initiator takes it from
    EARMARK_CHAP_SECRET, or user%secret@ typed in)."""
    policy = server.portal.config.policy.value
    for iqn, spec in server.portal.targets.items():
        user = f"{spec.entry.chap[0]}@" if spec.entry.chap is not None else ""
        for number, unit in sorted(spec.units.items()):
            if only is not None and f"{iqn} LUN {number}" not in only:
                continue
            path = getattr(unit.backing, "path", "memory")
            url = f"iscsi://{user}{server.address}:{server.port}/{iqn}/{number}"
            if json_format:
                print(logs.line("info", "serving", logs.Context(target=iqn, lun=number),
                                fields={"url": url, "path": path, "policy": policy,
                                        "memory": server.arena.capacity,
                                        "readonly": unit.disk.read_only}), flush=True)
                continue
            mode = ", read-only" if unit.disk.read_only else ""
            print(f"serving {path} as {iqn} LUN {number} (policy {policy}, "
                  f"memory {server.arena.capacity} B{mode})")
            print(url, flush=True)
