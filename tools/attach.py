"""`earmark attach` as a process, and the mounts and loop devices a test puts on it.

For the tests and benchmarks that need the LUN as a file or a block device:
:class:`EarmarkAttach` starts the command a user runs and waits for the lines
it prints once they can be used. Whatever happens in the body, leaving the
``with`` ends it (SIGTERM, then SIGKILL) and removes what could outlive it: a
loop device over its file, and the mount itself. :func:`mounted` is the same
for a filesystem mounted on top.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO

from tools.captured import captured_text
from tools.peers import PeerError

__all__ = ["EarmarkAttach", "abort_fuse", "is_mounted", "join_cgroup", "mounted", "run"]


def run(*argv: str | Path) -> str:
    """Run a system tool (mkfs, mount, fsck...); its stdout, or PeerError with its words."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PeerError(f"{argv[0]} failed", argv=[str(a) for a in argv],
                        returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
    return proc.stdout


def is_mounted(path: Path) -> bool:
    want = os.path.abspath(path)  # not realpath: no stat through a mount that may hang
    with open("/proc/self/mountinfo") as info:
        return any(line.split(" ")[4] == want for line in info)


@contextmanager
def mounted(device: str | Path, path: Path, *options: str) -> Iterator[Path]:
    """``device`` mounted at ``path`` for the body; unmounted after, even on failure."""
    path.mkdir(exist_ok=True)
    run("mount", *options, device, path)
    try:
        yield path
    finally:
        if is_mounted(path):
            run("umount", path)


def join_cgroup(group: Path) -> Callable[[], None]:
    """A ``preexec_fn`` that puts the child in the cgroup ``group`` before it runs anything."""
    procs = str(group / "cgroup.procs")

    def enter() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return enter


def abort_fuse(mountpoint: Path) -> None:
    """End the FUSE connection at ``mountpoint`` (fusectl): every request it has fails at
    once, even those a daemon stuck in the kernel will never answer."""
    connections = Path("/sys/fs/fuse/connections")
    if not is_mounted(connections):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(connections)], check=False)
    want = os.path.abspath(mountpoint)  # no stat through a hung mount
    with open("/proc/self/mountinfo") as info:
        devices = [line.split(" ")[2] for line in info if line.split(" ")[4] == want]
    for device in devices:
        abort = connections / device.split(":")[1] / "abort"
        if abort.exists():
            abort.write_text("1")


class EarmarkAttach:
    """`python -m earmark.cli attach URL MOUNTPOINT [options]`; a context manager.

    ``disk`` is the file and ``loop`` the loop device (with ``--loop``) it printed.
    """

    def __init__(self, url: str, mountpoint: Path, *options: str,
                 start_timeout: float = 30.0, cgroup: Path | None = None) -> None:
        """``cgroup``: a cgroup v1 directory the daemon runs in from its start."""
        self.url = url
        self._cgroup = cgroup
        self.mountpoint = mountpoint
        self.options = options
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self.disk = mountpoint / "disk"
        self.loop: str | None = None

    def mkfs_ext4(self, *options: str) -> str:
        """A new ext4 on the loop device (``--loop``); the device."""
        assert self.loop is not None, "mkfs_ext4 needs earmark attach --loop"
        run("mkfs.ext4", "-q", "-F", *options, self.loop)
        return self.loop

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "earmark.cli", "attach", self.url,
                str(self.mountpoint), *self.options]

    def __enter__(self) -> EarmarkAttach:
        self.mountpoint.mkdir(exist_ok=True)
        self._stderr = tempfile.TemporaryFile()
        enter = None if self._cgroup is None else join_cgroup(self._cgroup)
        proc = self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                             stderr=self._stderr, preexec_fn=enter)
        try:
            lines = self._lines(2 if "--loop" in self.options else 1)
        except BaseException:
            self._clean()
            raise
        if len(lines) > 1:
            self.loop = lines[1]
        assert proc.poll() is None
        return self

    def _lines(self, count: int) -> list[str]:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        out, printed = proc.stdout.fileno(), b""
        deadline = time.monotonic() + self._start_timeout
        while printed.count(b"\n") < count:
            left = deadline - time.monotonic()
            ready = select.select([out], [], [], max(left, 0))[0] if left > 0 else []
            chunk = os.read(out, 4096) if ready else b""
            if not chunk:
                raise PeerError("earmark attach exited or printed nothing in time",
                                argv=self.argv, returncode=proc.poll(),
                                stdout=printed.decode(errors="replace"), stderr=self.stderr)
            printed += chunk
        return printed.decode().split("\n")[:count]

    @property
    def stderr(self) -> str:
        if self._stderr is None:
            return ""
        return captured_text(self._stderr)

    def wait(self, timeout: float = 60.0) -> int:
        """Its exit status, once it exited (after `earmark detach` or a signal)."""
        assert self._proc is not None
        return self._proc.wait(timeout)

    def stop(self) -> int:
        """SIGTERM and its exit status (it flushes, detaches the loop device, unmounts)."""
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        return self.wait()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._clean()

    def _ours(self, loop: str) -> bool:
        """Still over our file (or over the "/disk" left of it once its mount is gone),
        not over another's that took the number since."""
        back = subprocess.run(["losetup", "-n", "-O", "BACK-FILE", loop], capture_output=True,
                              text=True, check=False).stdout.strip()
        return back == str(self.disk) or back.startswith("/disk")

    def _clean(self) -> None:
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:  # stuck in the kernel on its own mount
                        abort_fuse(self.mountpoint)
                        proc.wait()
        finally:
            if proc is not None and proc.stdout is not None:
                proc.stdout.close()
            if self.loop is not None and self._ours(self.loop):
                subprocess.run(["losetup", "-d", self.loop], check=False)
            if is_mounted(self.mountpoint):
                subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None
