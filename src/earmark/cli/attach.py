"""`earmark attach URL MOUNTPOINT`: the LUN as MOUNTPOINT/disk (FUSE), optionally a loop device.

Runs in the foreground until SIGINT, SIGTERM or `earmark detach MOUNTPOINT`;
prints the file, then the loop device, once they can be used. A mistake (the
URL, the target, the mountpoint, losetup) is one line on stderr and exit 2,
with nothing left mounted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import earmark.cli.loops as loops
from earmark.attach.daemon import AttachOptions, attach
from earmark.attach.loopdev import LoopError
from earmark.attach.mount import MountError
from earmark.attach.pinned import PinError
from earmark.cli.ls import CREDENTIALS
from earmark.cli.poll_flag import add_poll_flag
from earmark.host.policy import Policy
from earmark.initiator.errors import InitiatorError
from earmark.memory.errors import ArenaError
from earmark.scsi.sense import ScsiError
from earmark.service.address import parse_address
from earmark.units import parse_size

#: ``--poll``'s default: the daemon polls up to this many microseconds while a request waits
#: for the target, so the answer finds it awake, and with no request waiting it sleeps at
#: once (earmark.attach.serve). Measured with ``benchmarks/attach_perf.py`` (README).
POLL_US = 200


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "attach", help="an iSCSI LUN as MOUNTPOINT/disk (FUSE) and a loop device",
        description=f"Expose one LUN as the file MOUNTPOINT/disk. {CREDENTIALS}.")
    p.add_argument("url", help="iscsi://[user[%%secret]@]host[:port]/target-iqn/lun")
    p.add_argument("mountpoint", type=Path, help="an empty directory")
    p.add_argument("--loop", action="store_true",
                   help="attach a loop device over MOUNTPOINT/disk and print it")
    p.add_argument("--policy", choices=[p.value for p in Policy], default="reserve",
                   help="the initiator's memory discipline (default reserve: memory "
                        "reserved and locked before serving)")
    p.add_argument("--memory", default="16MiB", help="the initiator's arena (default 16MiB)")
    p.add_argument("--requests", type=int, default=32,
                   help="FUSE requests in flight at once, each with its own buffer (default 32)")
    p.add_argument("--metrics", metavar="ADDRESS:PORT",
                   help="serve the initiator's Prometheus figures there (port 0: any free one)")
    add_poll_flag(p, POLL_US, "FUSE request",
                  "while a FUSE request waits for the target (none waits: sleep at once)")
    p.add_argument("--event-loop", choices=loops.LOOPS, default="auto",
                   help="uvloop if installed (auto, the default), or force one")


def run(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, flush=True)

    try:
        if args.requests < 1:
            raise ValueError("--requests must be at least 1")
        metrics = None if args.metrics is None else parse_address(args.metrics, "--metrics")
        opts = AttachOptions(args.url, args.mountpoint, args.loop, Policy(args.policy),
                             parse_size(args.memory, "--memory"), args.requests, metrics,
                             args.poll)
        return loops.run(attach(opts, say), loops.loop_name(args.event_loop))
    except (InitiatorError, ScsiError, ArenaError, MountError, LoopError, PinError,
            ValueError, OSError) as exc:
        print(f"earmark attach: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
