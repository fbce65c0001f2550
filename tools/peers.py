"""Drivers for the real iSCSI peers earmark is tested and benchmarked against.

earmark's own code is only trustworthy once it interoperates with implementations
it did not write. This module starts and stops ``tgtd`` (Debian ``tgt``, a
userspace target) and runs libiscsi's tools (Debian ``libiscsi-bin``) against a
target, turning their human-oriented output into dataclasses that tests and
benchmarks can assert on.

Everything here talks to 127.0.0.1 only and never uses a fixed port: several
test runs (and several tgtd instances in one run) must be able to share a
machine without stepping on each other or on a system iSCSI target on 3260.

Every external command runs with a timeout, and every process started here is
stopped on every path out (context managers with ``finally``), because a leaked
tgtd keeps its port and LUN file busy until someone notices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple

__all__ = [
    "DEFAULT_IQN",
    "Capacity",
    "ConformanceResult",
    "Inquiry",
    "LsLun",
    "LsTarget",
    "PeerError",
    "PeerNotFoundError",
    "PerfResult",
    "TestOutcome",
    "Tgtd",
    "free_port",
    "iscsi_inq",
    "iscsi_ls",
    "iscsi_perf",
    "iscsi_readcapacity16",
    "iscsi_test_cu",
    "parse_cunit",
    "parse_inquiry",
    "parse_iscsi_ls",
    "parse_perf",
    "parse_readcapacity16",
    "port_accepts",
]

DEFAULT_IQN = "iqn.2024-01.org.earmark:tgtd"

# Where each tool comes from, so a missing binary names the package that fixes it.
_PACKAGE_OF = {
    "tgtd": "tgt",
    "tgtadm": "tgt",
    "iscsi-ls": "libiscsi-bin",
    "iscsi-inq": "libiscsi-bin",
    "iscsi-readcapacity16": "libiscsi-bin",
    "iscsi-perf": "libiscsi-bin",
    "iscsi-test-cu": "libiscsi-bin",
}

# Characters libiscsi's URL parser cannot carry in user/password: it splits on
# '@', '%', '/', ':' and '?' without any percent-decoding.
_URL_UNSAFE = re.compile(r"[@%/:?&#\s]")


class PeerError(RuntimeError):
    """A real peer failed; carries its output because that is where the cause is."""

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        returncode: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        parts = [message]
        if self.argv:
            parts.append(f"command: {' '.join(self.argv)}")
        if returncode is not None:
            parts.append(f"exit status: {returncode}")
        if stderr.strip():
            parts.append(f"stderr:\n{_tail(stderr)}")
        if stdout.strip():
            parts.append(f"stdout:\n{_tail(stdout)}")
        super().__init__("\n".join(parts))


class PeerNotFoundError(PeerError):
    """A peer binary is not installed; the message says how to install it."""


def _tail(text: str, limit: int = 4000) -> str:
    # Peers can be chatty (the conformance suite prints ~400 lines); the end is
    # where the failure is, and an exception message must stay readable.
    text = text.rstrip()
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _which(tool: str) -> str:
    # /usr/sbin is not on PATH for many non-root shells, but tgtd lives there.
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        pkg = _PACKAGE_OF.get(tool, tool)
        raise PeerNotFoundError(f"{tool} not found: run scripts/setup (apt-get install -y {pkg})")
    return found


@dataclass(frozen=True)
class _Completed:
    argv: tuple[str, ...]
    returncode: int | None  # None when we had to stop it at the timeout
    stdout: str
    stderr: str
    timed_out: bool
    elapsed: float


def _run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    line_buffered: bool = False,
) -> _Completed:
    """Run a peer tool to completion or to its timeout, keeping partial output.

    subprocess.run() would raise on timeout and drop what the tool printed so
    far; for a conformance run that hangs in test 200 of 230 that output is the
    only diagnosis, so we stop it politely (SIGTERM), then firmly (SIGKILL), and
    return whatever it wrote.
    """
    cmd = list(argv)
    if line_buffered and (stdbuf := shutil.which("stdbuf")):
        # stdout to a pipe is block-buffered in C; a killed tool would lose up
        # to 4 KiB of results unless told to flush per line.
        cmd = [stdbuf, "-oL", "-eL", *cmd]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    except BaseException:
        # KeyboardInterrupt and friends: never leave the tool running.
        proc.kill()
        proc.communicate()
        raise
    return _Completed(
        argv=tuple(argv),
        returncode=None if timed_out else proc.returncode,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
        timed_out=timed_out,
        elapsed=time.monotonic() - start,
    )


def _check(done: _Completed, what: str) -> _Completed:
    if done.timed_out:
        raise PeerError(
            f"{what} did not finish in time; is the target alive and listening?",
            argv=done.argv,
            stdout=done.stdout,
            stderr=done.stderr,
        )
    if done.returncode != 0:
        raise PeerError(
            f"{what} failed",
            argv=done.argv,
            returncode=done.returncode,
            stdout=done.stdout,
            stderr=done.stderr,
        )
    return done


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it (bind to port 0), so parallel runs get different ports
    without coordinating. It is inherently racy: someone may take it before the
    caller binds, so callers must detect a failed bind and retry (Tgtd does).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_accepts(port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port` (a started server)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _check_credential(name: str, value: str) -> None:
    if not value or _URL_UNSAFE.search(value):
        raise ValueError(
            f"{name} {value!r} cannot travel in a libiscsi URL: use a non-empty value "
            "without '@', '%', '/', ':', '?', '&', '#' or whitespace"
        )


def _libiscsi_url(
    port: int,
    iqn: str | None,
    lun: int | None,
    user: str | None,
    password: str | None,
    target_user: str | None = None,
    target_password: str | None = None,
) -> str:
    auth = ""
    if user is not None:
        _check_credential("user", user)
        auth = user
        if password is not None:
            _check_credential("password", password)
            auth += f"%{password}"
        auth += "@"
    elif password is not None:
        raise ValueError("a password needs a user: pass user= too")
    url = f"iscsi://{auth}127.0.0.1:{port}"
    if iqn is not None:
        url += f"/{iqn}/{lun if lun is not None else 0}"
        if target_user is not None:
            # Mutual CHAP: libiscsi (>= 1.19) takes the target's credentials as
            # URL arguments, not in the authority part.
            _check_credential("target_user", target_user)
            url += f"?target_user={target_user}"
            if target_password is not None:
                _check_credential("target_password", target_password)
                url += f"&target_password={target_password}"
    return url


# ---------------------------------------------------------------------------
# tgtd
# ---------------------------------------------------------------------------

_BIND_FAILED = re.compile(r"failed to create/bind to portal|unable to bind server socket")


class Tgtd:
    """One private tgtd instance serving one target with one LUN on 127.0.0.1.

    Use as a context manager; ``__exit__`` always stops tgtd, even when the
    body failed, because a leaked tgtd holds its port and LUN file.

    Isolation: each instance gets its own control socket in its own temp dir
    (tgtd honours ``TGT_IPC_SOCKET``; the default is ``/var/run/tgtd/socket.N``
    for ``-C N``), so instances never collide on N, need nothing in
    /var/run, and leave no stale socket files behind. To poke one by hand:
    ``TGT_IPC_SOCKET=<t.workdir>/socket tgtadm -C <t.control_port> --op show
    --mode target``.
    """

    def __init__(
        self,
        lun: str | os.PathLike[str] | int,
        *,
        iqn: str = DEFAULT_IQN,
        chap: tuple[str, str] | None = None,
        mutual: tuple[str, str] | None = None,
        port: int | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        """``lun`` is a backing file path, or a size in bytes for a sparse temp file.

        ``chap`` makes the target demand CHAP from initiators; ``mutual`` also
        makes tgtd prove itself to the initiator (needs ``chap``). ``port`` is
        for reproducing a specific setup; leave it None to get a free one.
        """
        if mutual is not None and chap is None:
            raise ValueError("mutual CHAP needs chap=(user, password) too")
        for creds in (chap, mutual):
            if creds is not None:
                _check_credential("CHAP user", creds[0])
                _check_credential("CHAP password", creds[1])
        if isinstance(lun, int):
            if lun <= 0 or lun % 512:
                raise ValueError(f"LUN size {lun} must be a positive multiple of 512 bytes")
            self._lun_size: int | None = lun
            self._lun_arg: Path | None = None
        else:
            path = Path(lun)
            if not path.is_file():
                raise FileNotFoundError(f"LUN backing file {path} does not exist: create it first")
            self._lun_size = None
            self._lun_arg = path.resolve()
        self.iqn = iqn
        self.chap = chap
        self.mutual = mutual
        self._requested_port = port
        self._start_timeout = start_timeout
        self._tgtd = _which("tgtd")
        self._tgtadm = _which("tgtadm")
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log: Path | None = None
        self.port = 0
        self.control_port = 0
        self.lun_path = self._lun_arg if self._lun_arg is not None else Path()

    # -- public surface -----------------------------------------------------

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("tgtd is not started: use `with Tgtd(...) as t:`")
        return self._workdir

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def url(
        self,
        lun: int = 1,
        user: str | None = None,
        password: str | None = None,
        *,
        target_user: str | None = None,
        target_password: str | None = None,
    ) -> str:
        """libiscsi URL of one LUN; credentials only when given, so tests can omit them."""
        return _libiscsi_url(self.port, self.iqn, lun, user, password, target_user, target_password)

    def auth_url(self, lun: int = 1) -> str:
        """URL carrying the CHAP (and mutual CHAP) credentials this target was set up with."""
        user, password = self.chap if self.chap else (None, None)
        tuser, tpassword = self.mutual if self.mutual else (None, None)
        return _libiscsi_url(self.port, self.iqn, lun, user, password, tuser, tpassword)

    def portal_url(self, user: str | None = None, password: str | None = None) -> str:
        """Portal URL (no target, no LUN), the form iscsi-ls wants for discovery."""
        return _libiscsi_url(self.port, None, None, user, password)

    def log_text(self) -> str:
        """What tgtd wrote to stdout/stderr so far (it logs there with -f)."""
        if self._log is None or not self._log.exists():
            return ""
        return self._log.read_text("utf-8", "replace")

    def tgtadm(self, *args: str, timeout: float = 10.0) -> str:
        """Run tgtadm against this instance's private control socket."""
        done = _run(
            [self._tgtadm, "-C", str(self.control_port), *args],
            timeout=timeout,
            env=self._env(),
        )
        return _check(done, "tgtadm").stdout

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> Tgtd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Tgtd:
        if self._proc is not None:
            raise RuntimeError("this Tgtd is already started; make a new one")
        self._workdir = Path(tempfile.mkdtemp(prefix="earmark-tgtd-"))
        try:
            if self._lun_size is not None:
                self.lun_path = self._workdir / "lun.img"
                with open(self.lun_path, "wb") as f:
                    f.truncate(self._lun_size)  # sparse: costs no disk until written
            # A port taken between free_port() and tgtd's bind is a real race
            # with parallel runs; tgtd does not exit on it, so we detect and retry.
            attempts = 1 if self._requested_port is not None else 5
            for attempt in range(attempts):
                self.port = self._requested_port or free_port()
                if self._launch():
                    break
                self._kill_hard()
                if attempt == attempts - 1:
                    raise PeerError(
                        f"tgtd could not bind 127.0.0.1:{self.port}; "
                        "pick another port (or let Tgtd choose one)",
                        stderr=self.log_text(),
                    )
            self._configure()
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop tgtd the way it accepts, then make sure; idempotent.

        tgtd ignores SIGTERM (observed even with no targets, tgt 1.0.85), so
        the orderly path is tgtadm: force-delete the target (drops sessions),
        then delete the system, which ends the event loop. SIGKILL only if that
        fails, since it skips tgtd's cleanup of its sessions.
        """
        proc = self._proc
        try:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(PeerError, OSError):
                    self.tgtadm(
                        "--lld",
                        "iscsi",
                        "--op",
                        "delete",
                        "--mode",
                        "target",
                        "--tid",
                        "1",
                        "--force",
                        timeout=5,
                    )
                with contextlib.suppress(PeerError, OSError):
                    self.tgtadm("--op", "delete", "--mode", "system", timeout=5)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._kill_hard()
        finally:
            if proc is not None and proc.poll() is None:
                self._kill_hard()
            self._proc = None
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    # -- internals ----------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TGT_IPC_SOCKET"] = str(self.workdir / "socket")
        return env

    def _pick_control_port(self) -> int:
        # The socket path is private, so any N is free; still check tgtd's own
        # lock file so a reused workdir could never make two tgtds share one.
        for _ in range(100):
            n = random.randint(1000, 32767)  # tgtd refuses -C above 32767
            lock = self.workdir / f"socket.{n}.lock"
            if not lock.exists():
                return n
            with open(lock, "a") as f:
                try:
                    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue
                fcntl.lockf(f, fcntl.LOCK_UN)
                return n
        raise PeerError(f"no free tgtd control port under {self.workdir}")

    def _launch(self) -> bool:
        """Start tgtd; True once it serves its control socket with the portal bound.

        tgtd binds the portal (lld_init) before it opens the control socket
        (ipc_init), so once tgtadm answers, the portal outcome is in the log.
        """
        self.control_port = self._pick_control_port()
        self._log = self.workdir / f"tgtd.{self.control_port}.log"
        # A file, not a pipe: tgtd logs every connection error, and a pipe
        # nobody drains would eventually block it mid-benchmark.
        argv = [
            self._tgtd,
            "-f",
            "-C",
            str(self.control_port),
            "--iscsi",
            f"portal=127.0.0.1:{self.port}",
        ]
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,  # a terminal's Ctrl-C must not skip our orderly stop
            )
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self._proc.poll() is not None:
                raise PeerError(
                    "tgtd exited during startup; see its log below",
                    argv=argv,
                    returncode=self._proc.returncode,
                    stderr=self.log_text(),
                )
            done = _run(
                [self._tgtadm, "-C", str(self.control_port), "--op", "show", "--mode", "sys"],
                timeout=2,
                env=self._env(),
            )
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise PeerError(
                    f"tgtd did not open its control socket within {self._start_timeout} s",
                    stderr=self.log_text(),
                )
            time.sleep(0.02)
        return not _BIND_FAILED.search(self.log_text())

    def _configure(self) -> None:
        lld = ("--lld", "iscsi")
        self.tgtadm(*lld, "--op", "new", "--mode", "target", "--tid", "1", "-T", self.iqn)
        self.tgtadm(
            *lld,
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            str(self.lun_path),
        )
        self.tgtadm(*lld, "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        if self.chap is not None:
            user, password = self.chap
            self.tgtadm(
                *lld, "--op", "new", "--mode", "account", "--user", user, "--password", password
            )
            self.tgtadm(*lld, "--op", "bind", "--mode", "account", "--tid", "1", "--user", user)
        if self.mutual is not None:
            user, password = self.mutual
            self.tgtadm(
                *lld, "--op", "new", "--mode", "account", "--user", user, "--password", password
            )
            self.tgtadm(
                *lld,
                "--op",
                "bind",
                "--mode",
                "account",
                "--tid",
                "1",
                "--user",
                user,
                "--outgoing",
            )

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        while not port_accepts(self.port):
            if not self.running:
                raise PeerError("tgtd died before it accepted connections", stderr=self.log_text())
            if time.monotonic() > deadline:
                raise PeerError(
                    f"tgtd is not accepting on 127.0.0.1:{self.port} after {self._start_timeout} s",
                    stderr=self.log_text(),
                )
            time.sleep(0.02)

    def _kill_hard(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self._proc = None


# ---------------------------------------------------------------------------
# iscsi-ls
# ---------------------------------------------------------------------------

_SIZE_UNITS = {" ": 1, "": 1, "k": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class LsLun:
    """One LUN as iscsi-ls -s shows it.

    iscsi-ls's size is coarse: it multiplies the block size by the *last* LBA
    (one block short), then divides by 1024 with truncation while above 1024,
    so a 64 MiB LUN shows as "63M". ``size_bytes`` is that figure scaled back,
    a lower bound; use iscsi_readcapacity16 for the exact size.
    """

    lun: int
    device_type: str
    size_text: str | None = None
    size_bytes: int | None = None
    no_media: bool = False


@dataclass(frozen=True)
class LsTarget:
    iqn: str
    portal: str
    tpgt: int | None
    luns: list[LsLun] = field(default_factory=list)


_LS_TARGET = re.compile(r"^Target:(\S+) Portal:(\S+)$")
_LS_LUN = re.compile(
    r"^Lun:(\d+)\s+Type:(\S+)(?: \(Size:(\d+)([ kMGT]?)\))?(?P<nomedia> \(No media)?"
)


def parse_iscsi_ls(text: str) -> list[LsTarget]:
    targets: list[LsTarget] = []
    for raw in text.splitlines():
        line = raw.strip()
        if m := _LS_TARGET.match(line):
            portal, _, tpgt = m.group(2).rpartition(",")
            if not portal:  # no ",tpgt" suffix
                portal, tpgt = m.group(2), ""
            targets.append(
                LsTarget(iqn=m.group(1), portal=portal, tpgt=int(tpgt) if tpgt else None)
            )
        elif (m := _LS_LUN.match(line)) and targets:
            size_text = size_bytes = None
            if m.group(3) is not None:
                unit = m.group(4).strip()
                size_text = m.group(3) + unit
                size_bytes = int(m.group(3)) * _SIZE_UNITS[unit]
            targets[-1].luns.append(
                LsLun(
                    lun=int(m.group(1)),
                    device_type=m.group(2),
                    size_text=size_text,
                    size_bytes=size_bytes,
                    no_media=m.group("nomedia") is not None,
                )
            )
    return targets


def iscsi_ls(portal_url: str, *, show_luns: bool = False, timeout: float = 30.0) -> list[LsTarget]:
    """Discover targets (SendTargets) at a portal; with show_luns, log in to each.

    Note: tgtd does not apply a target's CHAP account to discovery sessions,
    so discovery succeeds with wrong credentials; only show_luns (a normal
    login) proves the credentials.
    """
    argv = [_which("iscsi-ls"), *(["-s"] if show_luns else []), portal_url]
    done = _check(_run(argv, timeout=timeout), "iscsi-ls")
    return parse_iscsi_ls(done.stdout)


# ---------------------------------------------------------------------------
# iscsi-inq
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Inquiry:
    """Standard INQUIRY data as iscsi-inq prints it (one ``Key:Value`` per line)."""

    peripheral_qualifier: str
    device_type: str
    vendor: str
    product: str
    revision: str
    version: str
    version_descriptors: list[str]
    fields: dict[str, str]

    @property
    def is_disk(self) -> bool:
        return self.device_type == "DIRECT_ACCESS"


def parse_inquiry(text: str) -> Inquiry:
    fields: dict[str, str] = {}
    descriptors: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        if key == "Version Descriptor":
            descriptors.append(value.strip())
        else:
            fields[key.strip()] = value.strip()
    if "Peripheral Device Type" not in fields:
        raise PeerError("iscsi-inq printed no standard INQUIRY data", stdout=text)
    return Inquiry(
        peripheral_qualifier=fields.get("Peripheral Qualifier", ""),
        device_type=fields["Peripheral Device Type"],
        vendor=fields.get("Vendor", ""),
        product=fields.get("Product", ""),
        revision=fields.get("Revision", ""),
        version=fields.get("Version", ""),
        version_descriptors=descriptors,
        fields=fields,
    )


def iscsi_inq(url: str, *, timeout: float = 30.0) -> Inquiry:
    done = _check(_run([_which("iscsi-inq"), url], timeout=timeout), "iscsi-inq")
    return parse_inquiry(done.stdout)


# ---------------------------------------------------------------------------
# iscsi-readcapacity16
# ---------------------------------------------------------------------------


class Capacity(NamedTuple):
    """READ CAPACITY(16) as ``(block_size, num_blocks)``; a tuple so it unpacks."""

    block_size: int
    num_blocks: int

    @property
    def size_bytes(self) -> int:
        return self.block_size * self.num_blocks


_RC16_LBA = re.compile(r"RETURNED LOGICAL BLOCK ADDRESS:(\d+)")
_RC16_LEN = re.compile(r"LOGICAL BLOCK LENGTH IN BYTES:(\d+)")


def parse_readcapacity16(text: str) -> Capacity:
    lba, blen = _RC16_LBA.search(text), _RC16_LEN.search(text)
    if lba is None or blen is None:
        raise PeerError("iscsi-readcapacity16 printed no capacity", stdout=text)
    # The tool prints the last LBA, not a count.
    return Capacity(block_size=int(blen.group(1)), num_blocks=int(lba.group(1)) + 1)


def iscsi_readcapacity16(url: str, *, timeout: float = 30.0) -> Capacity:
    argv = [_which("iscsi-readcapacity16"), url]
    done = _check(_run(argv, timeout=timeout), "iscsi-readcapacity16")
    return parse_readcapacity16(done.stdout)


# ---------------------------------------------------------------------------
# iscsi-perf
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PerfResult:
    """One iscsi-perf run (READ(16) only).

    ``iops`` is the tool's own final average (completed I/Os over elapsed
    time). ``mib_per_s`` is recomputed from it as a float; the tool's figure,
    labelled "MB/s", is really MiB/s (>> 20) truncated to an integer, kept as
    ``reported_mb_per_s``. ``final`` is False when the tool ended without its
    closing summary and ``iops`` comes from the last one-second progress line.
    """

    iops: int
    mib_per_s: float
    reported_mb_per_s: int
    block_size: int
    blocks_per_io: int
    transfer_bytes: int
    queue_depth: int
    random: bool
    seconds: int
    final: bool
    per_second_iops: list[int]


_PERF_CAP = re.compile(r"capacity is (\d+) blocks or (\d+) byte")
_PERF_MODE = re.compile(r"performing (\w+) READ with (\d+) parallel requests", re.I)
_PERF_XFER = re.compile(r"transfer size of (\d+) blocks \((\d+) byte\)", re.I)
_PERF_RUN = re.compile(r"will run for (\d+) seconds")
_PERF_AVG = re.compile(r"iops average (\d+) \((\d+) MB/s\)")
_PERF_CUR = re.compile(r"iops current (\d+) \(")
_PERF_FAIL = re.compile(r"^(Read10/16 failed.*|failed to .*|iscsi_service failed.*)$", re.M)


def parse_perf(text: str) -> PerfResult:
    """Parse iscsi-perf's stdout.

    The tool redraws one status line with '\\r' every second ("iops current N
    ..., iops average M ...") and, when the run time is up, overwrites it with
    a closing "iops average M (X MB/s)" that has no "current" part; that
    closing segment is the run's total.
    """
    if fail := _PERF_FAIL.search(text):
        raise PeerError(f"iscsi-perf reported an I/O failure: {fail.group(1)}", stdout=text)
    cap, mode, xfer = _PERF_CAP.search(text), _PERF_MODE.search(text), _PERF_XFER.search(text)
    if cap is None or mode is None or xfer is None:
        raise PeerError("iscsi-perf output lacks its header (did it connect?)", stdout=text)
    block_size = int(cap.group(2)) // max(int(cap.group(1)), 1)
    segments = [s for s in re.split(r"[\r\n]", text) if _PERF_AVG.search(s)]
    if not segments:
        raise PeerError(
            "iscsi-perf printed no IOPS figure: it reports once per second, run it for "
            "seconds >= 1 and check the target answers",
            stdout=text,
        )
    last = segments[-1]
    avg = _PERF_AVG.search(last)
    assert avg is not None
    final = _PERF_CUR.search(last) is None
    iops = int(avg.group(1))
    transfer = int(xfer.group(2))
    run = _PERF_RUN.search(text)
    return PerfResult(
        iops=iops,
        mib_per_s=iops * transfer / (1 << 20),
        reported_mb_per_s=int(avg.group(2)),
        block_size=block_size,
        blocks_per_io=int(xfer.group(1)),
        transfer_bytes=transfer,
        queue_depth=int(mode.group(2)),
        random=mode.group(1).lower() == "random",
        seconds=int(run.group(1)) if run else 0,
        final=final,
        per_second_iops=[int(m.group(1)) for s in segments if (m := _PERF_CUR.search(s))],
    )


def iscsi_perf(
    url: str,
    *,
    blocks: int = 8,
    queue_depth: int = 32,
    random: bool = True,
    seconds: int = 2,
    timeout: float | None = None,
) -> PerfResult:
    """Run ``iscsi-perf -b blocks -m queue_depth [-r] -t seconds url``.

    ``blocks`` counts LUN blocks, not bytes: on tgtd (512-byte blocks) 4 KiB is
    ``blocks=8``. ``seconds`` is whole seconds because the tool uses atoi(); the
    run lasts about ``seconds`` (it checks once per second of completions).
    """
    if seconds < 1:
        raise ValueError("iscsi-perf needs seconds >= 1: it reports once per second")
    if blocks < 1 or queue_depth < 1:
        raise ValueError("blocks and queue_depth must be >= 1")
    argv = [
        _which("iscsi-perf"),
        "-b",
        str(blocks),
        "-m",
        str(queue_depth),
        *(["-r"] if random else []),
        "-t",
        str(seconds),
        url,
    ]
    limit = timeout if timeout is not None else seconds + 30.0
    done = _check(_run(argv, timeout=limit), "iscsi-perf")
    return parse_perf(done.stdout)


# ---------------------------------------------------------------------------
# iscsi-test-cu (CUnit)
# ---------------------------------------------------------------------------

Outcome = Literal["passed", "failed", "skipped", "crashed"]


@dataclass(frozen=True)
class TestOutcome:
    """One conformance test: ``name`` is ``Suite.Test`` as in ``iscsi-test-cu -l``."""

    __test__ = False  # not a pytest class, despite the name

    name: str
    outcome: Outcome
    detail: str


@dataclass(frozen=True)
class ConformanceResult:
    """An iscsi-test-cu run, counted honestly.

    CUnit counts a test that printed ``[SKIPPED]`` (command not implemented,
    feature absent) as passed; here it is ``skipped`` and not ``passed``.
    ``crashed`` means the run did not end normally (signal, timeout, or no
    CUnit summary); outcomes then cover only the tests that got a verdict, and
    the test running at that moment is marked ``crashed``.
    """

    passed: int
    failed: int
    skipped: int
    crashed: bool
    outcomes: dict[str, TestOutcome]
    summary_lines: list[str]
    cunit_ran: int | None
    cunit_passed: int | None
    cunit_failed: int | None
    crash_reason: str | None
    returncode: int | None
    elapsed: float
    output: str

    def names(self, outcome: Outcome) -> list[str]:
        return [n for n, o in self.outcomes.items() if o.outcome == outcome]

    @property
    def consistent(self) -> bool:
        """Our per-test verdicts add up to CUnit's own totals."""
        return self.cunit_passed == self.passed + self.skipped and self.cunit_failed == self.failed


_CU_MARKER = re.compile(
    r"^(?:Suite: (?P<suite>\S+)|  Test: (?P<test>\S+) \.\.\.|(?P<summary>Run Summary:))", re.M
)
# CUnit prints the verdict right after the test's own output; "[FAILED]" in
# brackets is libiscsi's message text, not a verdict.
_CU_VERDICT = re.compile(r"(?<!\[)\b(passed|FAILED)\b(?!\])")
_CU_TESTS_ROW = re.compile(r"^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$", re.M)
_CU_NOTE = re.compile(r"^\s*(\[(?:SKIPPED|FAILED|WARNING)\].*|\d+\. \S+:\d+\s+- .*)$", re.M)


def _cu_verdict(body: str) -> tuple[str, int] | None:
    """Find the CUnit verdict in one test's output; return it and its offset.

    The verdict starts a line (or directly follows "..." when the test printed
    nothing). Text after it belongs to the suite teardown: tgtd's LUNReset
    test prints "passed    [FAILED] PRIN ..." and CUnit counts it passed.
    """
    candidates = list(_CU_VERDICT.finditer(body))
    for m in candidates:
        if m.start() == 0 or body[m.start() - 1] == "\n":
            return m.group(1), m.start()
    # A test whose last output lacked a newline gets the verdict glued to it.
    for m in reversed(candidates):
        if m.end() == len(body) or body[m.end()] == "\n":
            return m.group(1), m.start()
    return None


def parse_cunit(
    text: str,
    *,
    returncode: int | None = 0,
    timed_out: bool = False,
    elapsed: float = 0.0,
) -> ConformanceResult:
    outcomes: dict[str, TestOutcome] = {}
    suite = "?"
    markers = list(_CU_MARKER.finditer(text))
    summary_at: int | None = None
    missing_verdict: list[str] = []
    for i, m in enumerate(markers):
        if m.group("suite"):
            suite = m.group("suite")
            continue
        if m.group("summary"):
            summary_at = m.start()
            break
        name = f"{suite}.{m.group('test')}"
        end = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        body = text[m.end() : end]
        found = _cu_verdict(body)
        if found is None:
            missing_verdict.append(name)
            outcome: Outcome = "crashed"
            before = body
        else:
            verdict, at = found
            before = body[:at]
            if verdict == "FAILED":
                outcome = "failed"
            elif "[SKIPPED]" in before:
                outcome = "skipped"
            else:
                outcome = "passed"
        notes = [n.strip() for n in _CU_NOTE.findall(body)]
        outcomes[name] = TestOutcome(name=name, outcome=outcome, detail="\n".join(notes))

    summary_lines: list[str] = []
    cunit_ran = cunit_passed = cunit_failed = None
    if summary_at is not None:
        for line in text[summary_at:].splitlines():
            if line.strip():
                summary_lines.append(line.rstrip())
        if row := _CU_TESTS_ROW.search(text, summary_at):
            cunit_ran, cunit_passed, cunit_failed = (int(row.group(k)) for k in (2, 3, 4))

    reason: str | None = None
    if timed_out:
        reason = "timed out"
    elif returncode is not None and returncode < 0:
        reason = f"killed by {signal.Signals(-returncode).name}"
    elif summary_at is None:
        reason = f"no CUnit summary (exit status {returncode})"
    elif missing_verdict:
        reason = f"no verdict for {', '.join(missing_verdict)}"

    counts = {k: 0 for k in ("passed", "failed", "skipped")}
    for o in outcomes.values():
        if o.outcome in counts:
            counts[o.outcome] += 1
    return ConformanceResult(
        passed=counts["passed"],
        failed=counts["failed"],
        skipped=counts["skipped"],
        crashed=reason is not None,
        outcomes=outcomes,
        summary_lines=summary_lines,
        cunit_ran=cunit_ran,
        cunit_passed=cunit_passed,
        cunit_failed=cunit_failed,
        crash_reason=reason,
        returncode=returncode,
        elapsed=elapsed,
        output=text,
    )


def iscsi_test_cu(
    url: str,
    *,
    tests: str = "ALL",
    dataloss: bool = True,
    timeout: float = 1800.0,
    allow_sanitize: bool = False,
    second_url: str | None = None,
) -> ConformanceResult:
    """Run libiscsi's conformance suite and count its verdicts.

    Does not raise for failing tests or a crashed run: both are results. It
    raises only when the tool is missing. ``dataloss`` enables the write tests,
    which overwrite the LUN: point it only at a scratch LUN. ``tests`` is
    ``FAMILY[.SUITE[.TEST]]`` as listed by ``iscsi-test-cu -l``. ``second_url`` is
    another path to the same LUN, for the multipath tests (they skip without one).
    """
    argv = [
        _which("iscsi-test-cu"),
        *(["--dataloss"] if dataloss else []),
        *(["--allow-sanitize"] if allow_sanitize else []),
        f"--test={tests}",
        url,
        *([second_url] if second_url is not None else []),
    ]
    done = _run(argv, timeout=timeout, line_buffered=True)
    result = parse_cunit(
        done.stdout,
        returncode=done.returncode,
        timed_out=done.timed_out,
        elapsed=done.elapsed,
    )
    if result.crashed and done.stderr.strip():
        # Login failures and libiscsi errors go to stderr; keep them in view.
        reason = f"{result.crash_reason}: {_tail(done.stderr, 500)}"
        result = dataclasses.replace(result, crash_reason=reason)
    return result
