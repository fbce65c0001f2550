"""A well-behaved initiator beside hostile clients, on `earmark serve` and on tgtd, in one run.

For each target, and for each load held against it, the good initiator (earmark's blocking
engine) logs in, then writes and reads 4 KiB at queue depth 1 for ``--seconds``:

- ``unloaded``: nothing else;
- ``idle``: ``--idle`` connections (10,000 by default, or what the fd limit allows) that
  connect and send nothing;
- ``slow_login``: ``--slow`` connections (1,000) that send half a login header and stop;
- ``malformed``: ``--junk`` logged-in sessions (4) sending a stream of PDUs no initiator
  sends (reserved opcodes, which a target rejects) and commands far outside the command
  window (which it must ignore), a few thousand a second each, and reading what comes back.

Each load reports ``login_s`` (connect, log in, READ CAPACITY), ``ops_per_s`` (write+read
pairs a second), ``rate_ratio`` (that over the same target's unloaded figure), ``rss_bytes``
(the target's VmRSS while loaded) and ``arena_bytes`` (earmark's arena; null for tgtd).
A login that fails or an I/O error is reported as ``error`` for that load, not a traceback.
Goals for earmark: login < 1 s and rate_ratio >= 0.8 under every load, RSS <= arena + 32 MiB.

    python benchmarks/hostile.py [--json] [--seconds 3] [--idle 10000] [--slow 1000] [--junk 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import earmark
import repo_root  # noqa: F401  (before tools: puts the repository root on sys.path)
from earmark.initiator.errors import InitiatorError
from earmark.scsi.sense import ScsiError
from tools.peers import Tgtd
from tools.serve import EarmarkServe

LUN_BYTES = 64 << 20
BLOCK = 4096
#: Half a Login Request header: the opcode and flags, and then nothing more.
HALF_LOGIN = bytes((0x43, 0x87)) + bytes(22)
#: What a hostile session sends, a PDU at a time: a reserved opcode (0x1f), and a SCSI
#: READ(10) whose CmdSN is half the serial space away from the window.
_RESERVED = struct.Struct(">BB2xB3s8sI28x")
_COMMAND = struct.Struct(">BB2xB3s8sIIII16s")
Result = dict[str, Any]


def _raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need + 512))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want - 512


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _good_initiator(url: str, seconds: float) -> tuple[float, float]:
    """(seconds to log in, write+read pairs a second)."""
    start = time.perf_counter()
    with earmark.open_sync(url, login_timeout=30, reconnect_timeout=5) as dev:
        login = time.perf_counter() - start
        data = os.urandom(BLOCK)
        view = memoryview(bytearray(BLOCK))
        pairs, at = 0, 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            dev.write(at, data)
            dev.readinto(at, view)
            pairs += 1
            at = (at + 7 * BLOCK) % (LUN_BYTES - BLOCK)
    return login, pairs / seconds


@contextlib.contextmanager
def _idle(port: int, n: int, first: bytes = b"") -> Iterator[None]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                if first:
                    sock.sendall(first)
            except OSError:  # refused or reset by the target: it protects itself
                continue
            socks.append(sock)
        yield
    finally:
        for sock in socks:
            sock.close()


def _junk_pdus(count: int) -> bytes:
    out = bytearray()
    for i in range(count):
        if i % 2:
            out += _RESERVED.pack(0x1F, 0x80, 0, bytes(3), bytes(8), 0x1000 + i)
        else:
            cdb = bytes((0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0)) + bytes(6)
            out += _COMMAND.pack(0x01, 0xC0, 0, bytes(3), bytes(8), 0x2000 + i, BLOCK,
                                 0x8000_0000 + i, 0, cdb)
    return bytes(out)


@contextlib.contextmanager
def _malformed(url: str, sessions: int, per_second: int = 2000) -> Iterator[None]:
    stop = threading.Event()
    batch = _junk_pdus(100)

    def hostile() -> None:
        while not stop.is_set():
            try:
                dev = earmark.open_sync(url, login_timeout=10, max_attempts=1)
            except InitiatorError:
                stop.wait(0.1)
                continue
            sock = dev._sock
            assert sock is not None
            sock.setblocking(False)
            try:
                while not stop.is_set():
                    with contextlib.suppress(BlockingIOError):
                        sock.send(batch)
                    with contextlib.suppress(BlockingIOError):
                        if sock.recv(1 << 16) == b"":
                            break
                    stop.wait(100 / per_second)
            except OSError:
                pass
            with contextlib.suppress(Exception):
                sock.close()

    threads = [threading.Thread(target=hostile, daemon=True) for _ in range(sessions)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(10)


def _measure(url: str, pid: int, seconds: float) -> Result:
    try:
        login, rate = _good_initiator(url, seconds)
    except (InitiatorError, ScsiError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "rss_bytes": _rss(pid)}
    return {"login_s": round(login, 4), "ops_per_s": round(rate, 1), "rss_bytes": _rss(pid)}


def run_target(name: str, url: str, port: int, pid: int, arena: int | None,
               args: argparse.Namespace) -> dict[str, Result]:
    loads: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
        "unloaded": contextlib.nullcontext,
        "idle": lambda: _idle(port, args.idle),
        "slow_login": lambda: _idle(port, args.slow, HALF_LOGIN),
        "malformed": lambda: _malformed(url, args.junk),
    }
    out: dict[str, Result] = {}
    for load, hold in loads.items():
        with hold():
            result = _measure(url, pid, args.seconds)
        base = out.get("unloaded", result).get("ops_per_s")
        rate = result.get("ops_per_s")
        result["rate_ratio"] = round(rate / base, 3) if rate and base else None
        result["arena_bytes"] = arena
        out[load] = result
        shown = (f"login {result['login_s']:6.3f} s  {result['ops_per_s']:>8,.0f} pairs/s  "
                 f"ratio {result['rate_ratio']}" if "error" not in result else result["error"])
        print(f"{name:8} {load:11} {shown}  rss {result['rss_bytes'] / 2**20:6.1f} MiB",
              flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections (10,000)")
    parser.add_argument("--slow", type=int, default=1000, help="half-login connections (1,000)")
    parser.add_argument("--junk", type=int, default=4, help="malformed sessions (4)")
    args = parser.parse_args()
    allowed = _raise_fd_limit(args.idle)
    if args.idle > allowed:
        print(f"--idle {args.idle}: the fd limit allows {allowed}; using that", file=sys.stderr)
        args.idle = allowed
    result: dict[str, dict[str, Result]] = {}
    with tempfile.TemporaryDirectory(prefix="earmark-hostile-") as tmp:
        lun = Path(tmp) / "lun.img"
        with open(lun, "wb") as f:
            f.truncate(LUN_BYTES)
        with EarmarkServe(lun) as ours:
            result["earmark"] = run_target("earmark", ours.url, ours.port, ours.pid,
                                           ours.arena_bytes, args)
        with Tgtd(lun) as tgtd:
            url = tgtd.url()
            port = int(url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            assert tgtd.pid is not None
            result["tgtd"] = run_target("tgtd", url, port, tgtd.pid, None, args)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
