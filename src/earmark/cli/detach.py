"""`earmark detach MOUNTPOINT`: end the `earmark attach` serving it, as SIGTERM does.

The daemon flushes the LUN, detaches its loop device and unmounts; this waits
for it to exit (on a pidfd, not by polling).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from pathlib import Path

from earmark.attach.mount import mounted_by

_WAIT = 120.0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("detach", help="flush, detach and unmount an `earmark attach`")
    p.add_argument("mountpoint", type=Path)


def run(args: argparse.Namespace) -> int:
    pid = mounted_by(args.mountpoint, Path("/proc/self/mountinfo").read_text())
    if pid is None:
        print(f"earmark detach: error: no earmark attach is mounted at {args.mountpoint}",
              file=sys.stderr)
        return 2
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        print(f"earmark detach: error: the earmark attach at {args.mountpoint} (pid {pid}) "
              "is gone; `fusermount3 -u` removes its mount", file=sys.stderr)
        return 2
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if not select.select([pidfd], [], [], _WAIT)[0]:
            print(f"earmark detach: error: pid {pid} did not exit within {_WAIT:.0f} s",
                  file=sys.stderr)
            return 1
    finally:
        os.close(pidfd)
    return 0
