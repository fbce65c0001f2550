"""The real kernel under memory pressure: a writer and `earmark attach` in one memory cgroup.

ext4 on `earmark attach --loop`, and a writer that dirties files on it faster than
the target drains them, both inside a cgroup v1 memory controller with a hard limit:
the writer's dirty pages fill the limit, the kernel reclaims by writing them back,
and writeback goes through the daemon, which is charged to the same limit. Under
``reserve`` it serves from memory it reserved and locked before the mount; under
``none`` it allocates a buffer per request as it comes, which is where reclaim
makes it wait for the writeback only it can do.

:func:`pressure_run` says what happened (completed, stalled, the writer or the daemon
OOM-killed), then lifts the limit so that whatever was stuck finishes, and checks
the filesystem (fsck) and every file whose fsync returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from tools.attach import EarmarkAttach, abort_fuse, is_mounted, join_cgroup, mounted, run
from tools.peers import PeerError
from tools.serve import EarmarkServe

__all__ = ["CGROUP_V1_MEMORY", "PressureResult", "memory_cgroup", "pressure_run"]

CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")
_names = itertools.count()

#: The writer, run in the cgroup: FILES files of MIB MiB each (known bytes), each
#: written whole then fsync'd; it prints each file's index once its fsync returned.
_WRITER = """
import hashlib, os, sys
root, files, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(files):
    seed = hashlib.sha256(str(i).encode()).digest() * (1 << 15)
    with open(os.path.join(root, f"f{i}"), "wb") as f:
        for _ in range(mib):
            f.write(seed)
        os.fsync(f.fileno())
    print(i, flush=True)
"""


def file_bytes(index: int, mib: int) -> bytes:
    return hashlib.sha256(str(index).encode()).digest() * (1 << 15) * mib


@dataclass
class PressureResult:
    policy: str
    options: str
    limit_bytes: int
    outcome: str  # completed | stalled | writer OOM-killed | daemon OOM-killed | ...
    files_synced: int
    files_planned: int
    seconds: float
    mbps: float
    peak_cgroup_bytes: int
    oom_kills: int
    fsck_clean: bool
    lost_files: int
    daemon_exit: int | None
    #: Where the daemon waited in the kernel when the writer stalled ("" if it did not).
    daemon_stack: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@contextmanager
def memory_cgroup(limit: int) -> Iterator[Path]:
    """A new cgroup v1 memory group of ``limit`` bytes; removed after (what is left in it
    is moved back to the root group first)."""
    path = CGROUP_V1_MEMORY / f"earmark-pressure-{os.getpid()}-{next(_names)}"
    path.mkdir()
    try:
        (path / "memory.limit_in_bytes").write_text(str(limit))
        yield path
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # it exited meanwhile
                (CGROUP_V1_MEMORY / "cgroup.procs").write_text(pid)
        path.rmdir()


def _oom_kills(group: Path) -> int:
    for line in (group / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def pressure_run(policy: str, work: Path, *, limit: int, files: int, mib: int,
                 options: tuple[str, ...] = (), stall_after: float = 30.0,
                 lun_bytes: int = 1 << 30) -> PressureResult:
    """One run under ``policy`` in ``work`` (an empty directory), `earmark attach` given
    ``options`` too; the filesystem is then checked through a new `earmark attach`,
    outside the cgroup, whatever became of the first one."""
    lun = work / "lun.img"
    with lun.open("wb") as f:
        f.truncate(lun_bytes)
    with EarmarkServe(lun) as target:
        with memory_cgroup(limit) as group, EarmarkAttach(
                target.url, work / "mnt", "--loop", "--policy", policy, *options,
                cgroup=group) as attached:
            loop = attached.mkfs_ext4("-E", "lazy_itable_init=1,nodiscard")
            fs = work / "ext4"
            fs.mkdir()
            run("mount", loop, fs)
            try:
                outcome, synced, seconds, stack = _write(group, fs, files, mib,
                                                         stall_after, attached)
                peak = int((group / "memory.max_usage_in_bytes").read_text())
                kills = _oom_kills(group)
                (group / "memory.limit_in_bytes").write_text("-1")  # let the stuck finish
            finally:  # a dead daemon's filesystem unmounts with errors: that is expected
                subprocess.run(["umount", str(fs)], capture_output=True, check=False)
            daemon_exit = attached.stop() if attached.running else attached.wait()
        fsck, lost = _check(target.url, work, synced, mib)
    return PressureResult(policy, " ".join(options), limit, outcome, synced, files,
                          round(seconds, 1), round(synced * mib / seconds, 1) if seconds else 0.0,
                          peak, kills, fsck, lost, daemon_exit, stack)


def _check(url: str, work: Path, synced: int, mib: int) -> tuple[bool, int]:
    """(fsck clean, synced files that do not read back as written), through a new attach."""
    with EarmarkAttach(url, work / "check", "--loop") as attached:
        assert attached.loop is not None
        fsck = subprocess.run(["fsck.ext4", "-fn", attached.loop], capture_output=True,
                              check=False).returncode == 0
        try:
            with mounted(attached.loop, work / "ext4", "-o", "ro") as fs:
                lost = sum(not (fs / f"f{i}").is_file()
                           or (fs / f"f{i}").read_bytes() != file_bytes(i, mib)
                           for i in range(synced))
        except PeerError:  # not even mountable
            lost = synced
        assert attached.stop() == 0
    return fsck, lost


def _write(group: Path, root: Path, files: int, mib: int, stall_after: float,
           attached: EarmarkAttach) -> tuple[str, int, float, str]:
    """(outcome, files synced, seconds, where the daemon waited if it stalled) of the
    writer in ``group``."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), str(files), str(mib)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            preexec_fn=join_cgroup(group))
    assert proc.stdout is not None
    out, synced, start = proc.stdout.fileno(), 0, time.monotonic()
    buffered = b""
    try:
        while True:
            ready = select.select([out], [], [], stall_after)[0]
            if not ready:
                outcome, where = _stalled(group, attached, proc)
                return outcome, synced, time.monotonic() - start, where
            chunk = os.read(out, 4096)
            buffered += chunk
            synced = buffered.count(b"\n")
            if not chunk:
                code = proc.wait()
                elapsed = time.monotonic() - start
                if code == 0:
                    return "completed", synced, elapsed, ""
                if not attached.running:
                    return "daemon OOM-killed" if _oom_kills(group) else "daemon died", \
                        synced, elapsed, ""
                killed = code == -9 and _oom_kills(group)
                return "writer OOM-killed" if killed else f"writer exit {code}", synced, \
                    elapsed, ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(60)


def kernel_stack(pid: int) -> str:
    """Where ``pid`` waits in the kernel, innermost first, as function names."""
    try:
        frames = Path(f"/proc/{pid}/stack").read_text().split("\n")
    except OSError:
        return ""
    return " < ".join(f.split("] ", 1)[-1].split("+", 1)[0] for f in frames if f)


def _stalled(group: Path, attached: EarmarkAttach,
             proc: subprocess.Popen[bytes]) -> tuple[str, str]:
    """No fsync returned for a while. The limit is lifted: a stall that only waited for
    memory ends then; a daemon inside reclaim, waiting for the writeback of a page that
    only its own answer can finish, does not (that wait is uninterruptible, and not even
    SIGKILL ends it): its FUSE connection is aborted, which fails that writeback."""
    where = kernel_stack(attached.pid)
    (group / "memory.limit_in_bytes").write_text("-1")
    proc.kill()
    try:
        proc.wait(20)
        return "stalled, then finished once the limit was lifted", where
    except subprocess.TimeoutExpired:
        abort_fuse(attached.mountpoint)
        proc.wait(60)
    if "try_to_free_mem_cgroup_pages" in where and "wait_writeback" in where:
        return "deadlocked: the daemon waits in reclaim for its own writeback", where
    return "deadlocked", where


def cgroup_v1_memory_available() -> bool:
    return (CGROUP_V1_MEMORY / "memory.limit_in_bytes").exists() and is_mounted(
        CGROUP_V1_MEMORY)
