"""Mounting and unmounting a FUSE filesystem, through fusermount3 (Debian's fuse3).

fusermount3 opens /dev/fuse, mounts it, and hands us the descriptor over a
socket (``_FUSE_COMMFD``), as libfuse does it, for root and for users alike.
With ``auto_unmount`` it stays behind, holding the other end, and unmounts
when our process ends however it ends: a daemon killed by SIGKILL leaves no
dead mount behind.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FSNAME", "Mount", "MountError", "check_mountpoint", "mounted_by", "unmount"]

FSNAME = "earmark"
FUSERMOUNT = "fusermount3"


class MountError(Exception):
    """A mountpoint we cannot use, or fusermount3 failing, in words for the user."""


def check_mountpoint(path: Path) -> None:
    """Raise :class:`MountError` unless ``path`` is an empty directory, not mounted on."""
    if not path.is_dir():
        raise MountError(f"{path} is not a directory")
    if os.path.ismount(path):
        raise MountError(f"{path} is in use: something is mounted there")
    if any(path.iterdir()):
        raise MountError(f"{path} is not empty")


@dataclass
class Mount:
    """A FUSE mount at ``path``: ``fd`` is /dev/fuse's end, ``keeper`` fusermount3's
    socket, which must stay open while we serve (closing it unmounts)."""

    path: Path
    fd: int
    keeper: socket.socket
    fusermount: subprocess.Popen[bytes]

    @classmethod
    def make(cls, path: Path, *, max_read: int) -> Mount:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        options = (f"rw,nosuid,nodev,fsname={FSNAME}:{os.getpid()},subtype={FSNAME},"
                   f"max_read={max_read},auto_unmount")
        # It sends the descriptor and stays, watching the socket; its stderr goes to a
        # file, read only if it fails (a pipe would stay open as long as it does).
        with theirs, tempfile.TemporaryFile() as said:
            proc = subprocess.Popen(
                [FUSERMOUNT, "-o", options, "--", str(path)], pass_fds=[theirs.fileno()],
                env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())},
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=said)
            theirs.close()
            _, fds, _, _ = socket.recv_fds(ours, 1, 1)
            if not fds:  # it exited without mounting
                ours.close()
                code = proc.wait()
                said.seek(0)
                words = said.read().decode(errors="replace").strip()
                raise MountError(f"{FUSERMOUNT} could not mount {path}: {words or code}")
        os.set_blocking(fds[0], False)
        return cls(path, fds[0], ours, proc)

    def close(self) -> None:
        """Our ends closed: the kernel ends the connection, fusermount3 unmounts if it
        is still mounted, and exits."""
        os.close(self.fd)
        self.keeper.close()
        self.fusermount.wait()


async def unmount(path: Path) -> str | None:
    """``fusermount3 -u`` while the caller goes on serving the requests an unmount sends
    (a last FLUSH and RELEASE); None, or what it said when it could not."""
    proc = await asyncio.create_subprocess_exec(
        FUSERMOUNT, "-u", "--", str(path), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    _, err = await proc.communicate()
    return None if proc.returncode == 0 else err.decode(errors="replace").strip()


def mounted_by(path: Path, mountinfo: str) -> int | None:
    """The pid of the `earmark attach` serving ``path``, from /proc/self/mountinfo's text."""
    want = os.path.abspath(path)  # not realpath: no stat through a mount that may hang
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        dash = fields.index("-")
        point = fields[4].encode().decode("unicode_escape")
        fstype, source = fields[dash + 1], fields[dash + 2]
        if point == want and fstype == f"fuse.{FSNAME}" and source.startswith(f"{FSNAME}:"):
            return int(source.removeprefix(f"{FSNAME}:"))
    return None
