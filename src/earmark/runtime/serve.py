"""`earmark serve FILE`: one file-backed LUN behind an iSCSI target, until SIGINT/SIGTERM.

Errors a user can meet (no such file, a size that is not whole blocks, a port in
use, a size that does not parse) end the command with one line on stderr that
says how to fix it, and exit status 2; a traceback would only bury the fix.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hashlib
import logging
import os
import re
import signal
import sys
from pathlib import Path

from earmark.iscsi.login import TargetEntry
from earmark.memory import Arena
from earmark.memory.levels import TargetLevel
from earmark.runtime.server import TargetServer, TargetSpec
from earmark.scsi.disk import Disk
from earmark.target.backing import BackingError, FileBacking
from earmark.target.lun import LogicalUnit
from earmark.target.session import Policy, SessionConfig

log = logging.getLogger("earmark.serve")

IQN_PREFIX = "iqn.2026-11.org.earmark:"
BLOCK_SIZE = 512
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class UsageError(Exception):
    """A mistake on the command line or in the environment; the message is the fix."""


def parse_size(text: str, what: str) -> int:
    """Bytes from "1G", "512M", "64MiB", "4096" (binary multiples, as dd and truncate)."""
    m = _SIZE.match(text)
    if m is None or int(m.group(1)) == 0:
        raise UsageError(f"{what} {text!r} is not a size: write it like 1G, 512M or 64MiB")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def target_iqn(path: Path) -> str:
    stem = re.sub(r"[^a-z0-9.-]+", "-", path.stem.lower()).strip("-.") or "disk"
    return IQN_PREFIX + stem


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a file as an iSCSI disk",
        description="Serve FILE as LUN 0 of an iSCSI target, admitting commands only "
                    "when the memory to complete them is reserved.",
    )
    p.add_argument("file", type=Path, help="the backing file (or block device)")
    p.add_argument("--size", help="create FILE with this size first (e.g. 1G)")
    p.add_argument("--address", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=3260, help="TCP port (default 3260)")
    p.add_argument("--memory", default="64MiB", help="the target's arena (default 64MiB)")
    p.add_argument("--policy", choices=[p.value for p in Policy], default="reserve",
                   help="admission: reserve (default) or none (allocate on demand)")
    p.add_argument("--chap", metavar="USER:SECRET",
                   help="require one-way CHAP with these credentials")
    p.add_argument("-v", "--verbose", action="store_true", help="log every session")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="earmark: %(message)s", stream=sys.stderr)
    try:
        server = _build(args)
        asyncio.run(_serve(server, args))
    except UsageError as exc:
        print(f"earmark serve: {exc}", file=sys.stderr)
        return 2
    except BackingError as exc:
        print(f"earmark serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _build(args: argparse.Namespace) -> TargetServer:
    path: Path = args.file
    if args.size is not None:
        _create(path, parse_size(args.size, "--size"))
    memory = parse_size(args.memory, "--memory")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a TCP port: use 1-65535")
    chap = None
    if args.chap is not None:
        user, sep, secret = args.chap.partition(":")
        if not sep or not user or not secret:
            raise UsageError(f"--chap {args.chap!r} must be USER:SECRET")
        chap = (user, secret)
    backing = FileBacking(path, block_size=BLOCK_SIZE)
    config = SessionConfig(policy=Policy(args.policy))
    granule = 64
    arena = Arena(memory // granule * granule or granule, levels=TargetLevel,
                  name="target arena")
    serial = hashlib.sha256(os.fsencode(path.resolve())).hexdigest()[:16]
    # WRITE SAME may cover no more than one transfer: initiators (libiscsi's tests
    # among them) read and write a whole WRITE SAME range with one command.
    max_transfer = 8 << 20
    disk = Disk(backing.size // BLOCK_SIZE, serial, block_size=BLOCK_SIZE,
                max_transfer_bytes=max_transfer,
                max_write_same_blocks=max_transfer // BLOCK_SIZE,
                max_compare_blocks=min(255, config.buffer_bytes // (2 * BLOCK_SIZE)))
    entry = TargetEntry(target_iqn(path), chap=chap)
    server = TargetServer([TargetSpec(entry, {0: LogicalUnit(0, disk, backing)})], arena=arena,
                          config=config, address=args.address, port=args.port)
    need = server.recv_bytes + sum(server.slot_claims.values())
    if memory < need:
        raise UsageError(f"--memory {args.memory} cannot hold one connection ({need} B): "
                         "give it at least 1MiB")
    return server


def _create(path: Path, size: int) -> None:
    if size % BLOCK_SIZE:
        raise UsageError(f"--size {size} B is not a multiple of the {BLOCK_SIZE}-byte block "
                         "size: round it (e.g. 1G)")
    if path.exists():
        have = path.stat().st_size
        if have != size:
            raise UsageError(f"{path} exists with {have} B, not {size} B: drop --size to serve "
                             "it as it is, or remove it first")
        return
    try:
        with open(path, "xb") as f:
            f.truncate(size)
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None


async def _serve(server: TargetServer, args: argparse.Namespace) -> None:
    try:
        await server.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {args.port} on {args.address} is in use: pick another "
                             "with --port") from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
            raise UsageError(f"cannot listen on {args.address}:{args.port}: {exc.strerror}: "
                             "check --address and --port") from None
        raise UsageError(f"cannot listen on {args.address}:{args.port}: {exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    iqn = next(iter(server.targets))
    cred = ""
    if args.chap is not None:
        cred = args.chap.replace(":", "%", 1) + "@"
    print(f"serving {args.file} as {iqn} (policy {args.policy}, memory {args.memory})")
    print(f"iscsi://{cred}{args.address}:{server.port}/{iqn}/0", flush=True)
    await stop.wait()
    await server.stop()
