"""`earmark serve` as a real process, for the tests and benchmarks that need one.

An embedded target shares the test's process, so it cannot be killed and restarted
the way a crash does it, and its memory cannot be told from the initiator's. This
starts the command a user runs, on 127.0.0.1 and a free port, and waits for the URL
it prints once it listens (and the arena it reports, which is the figure its memory
is judged against).

Stopping it is SIGTERM, which must end it with status 0 (in-flight commands finish,
the LUN is synced); :meth:`EarmarkServe.kill` is SIGKILL, a crash on purpose, after
which stopping has nothing left to check.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from tools.captured import captured_text
from tools.peers import PeerError, free_port

__all__ = ["EarmarkServe"]

_URL = re.compile(rb"^(iscsi://\S+)$", re.M)
_ARENA = re.compile(rb"\(policy \w+, memory (\d+) B[,)]")
_IN_USE = "in use"  # `earmark serve`'s words when the port was taken after free_port()


class EarmarkServe:
    """`python -m earmark.cli serve LUN --port P [options]`; use as a context manager.

    ``options`` are further command-line arguments (``--memory 64MiB``, ``--loop
    uvloop``...). ``__exit__`` always ends the process, even when the body failed:
    a leaked target keeps its port and its LUN file busy.
    """

    def __init__(self, lun: str | os.PathLike[str], *options: str,
                 start_timeout: float = 15.0, port: int = 0) -> None:
        """``port`` 0 takes a free one; another is for a target restarted where it was."""
        self.lun = Path(lun)
        self._fixed_port = port
        self.options = tuple(options)
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._killed = False
        self.port = 0
        #: The URL of LUN 0, as printed.
        self.url = ""
        #: The target's arena in bytes, as it reports it.
        self.arena_bytes = 0

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("earmark serve is not started: use `with EarmarkServe(...) as t:`")
        return self._proc.pid

    def __enter__(self) -> EarmarkServe:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> EarmarkServe:
        if self._proc is not None:
            raise RuntimeError("this EarmarkServe is already started; make a new one")
        # A port taken between free_port() and the bind is a real race on a shared
        # machine; earmark serve then exits 2 saying so, and another port is tried.
        for attempt in range(5):
            self.port = self._fixed_port or free_port()
            try:
                printed = self._launch()
                break
            except PeerError as exc:
                self._end_hard()
                if _IN_USE not in exc.stderr or attempt == 4 or self._fixed_port:
                    raise
        url, arena = _URL.search(printed), _ARENA.search(printed)
        assert url is not None
        if arena is None:
            self._end_hard()
            raise PeerError("earmark serve did not report its arena (memory N B) before its "
                            "URL", argv=self._argv(), stdout=printed.decode(errors="replace"))
        self.url = url.group(1).decode()
        self.arena_bytes = int(arena.group(1))
        return self

    def kill(self) -> None:
        """SIGKILL, now: nothing is finished or synced (a crash of the target)."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("earmark serve is not started")
        self._killed = True
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        """SIGTERM; raises PeerError unless it exits 0 within 30 s (then it is killed)."""
        proc = self._proc
        if proc is None:
            return
        try:
            if self._killed:
                return
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                raise PeerError("earmark serve did not stop within 30 s of SIGTERM",
                                argv=self._argv(), stderr=self._stderr_text()) from None
            if code != 0:
                raise PeerError("earmark serve did not exit 0 after SIGTERM", argv=self._argv(),
                                returncode=code, stderr=self._stderr_text())
        finally:
            self._end_hard()

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "earmark.cli", "serve", str(self.lun),
                "--port", str(self.port), *self.options]

    def _launch(self) -> bytes:
        """Start it; what it printed up to its URL (printed once it listens)."""
        # A file, not a pipe, for stderr: nobody drains it while the target runs.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (closed by _end_hard)
        argv = self._argv()
        proc = self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._stderr)
        assert proc.stdout is not None
        out = proc.stdout.fileno()
        printed = b""
        deadline = time.monotonic() + self._start_timeout
        while _URL.search(printed) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(f"earmark serve printed no URL within {self._start_timeout:g} s",
                                argv=argv, stdout=printed.decode(errors="replace"),
                                stderr=self._stderr_text())
            ready, _, _ = select.select([out], [], [], left)
            chunk = os.read(out, 4096) if ready else b""
            if ready and not chunk:  # its stdout closed: it exited
                proc.wait()
                raise PeerError("earmark serve exited before it listened", argv=argv,
                                returncode=proc.returncode,
                                stdout=printed.decode(errors="replace"),
                                stderr=self._stderr_text())
            printed += chunk
        return printed

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        return captured_text(self._stderr)

    def _end_hard(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
