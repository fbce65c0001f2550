"""`earmark serve` as a child process for the service tests: everything it prints kept, its
stdout read line by line until it has announced what it serves, its log (stderr) read by
a thread as it is written, so a test waits for a record rather than looking again."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Served:
    proc: subprocess.Popen[str]
    #: Every stdout line read so far.
    out: list[str] = field(default_factory=list)
    #: Its stdout, line by line, from a thread (None: it closed), so a wait has a bound.
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    #: Its stderr (the log), line by line as a thread reads it; `logged` is told of each.
    err: list[str] = field(default_factory=list)
    logged: threading.Condition = field(default_factory=threading.Condition)
    err_closed: bool = False

    def __post_init__(self) -> None:
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            self.lines.put(text)
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for text in self.proc.stderr:
            with self.logged:
                self.err.append(text)
                self.logged.notify_all()
        with self.logged:
            self.err_closed = True
            self.logged.notify_all()

    def read_until(self, want: str, timeout: float = 30.0) -> str:
        """The next stdout line that contains `want` (the lines before it are kept)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                text = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {want!r} within {timeout:g} s: "
                                     f"{self.printed()}") from None
            if text is None:
                raise AssertionError(f"earmark serve exited before printing {want!r}: "
                                     f"{self.printed()}")
            self.out.append(text)
            if want in text:
                return text

    def urls(self, count: int) -> list[str]:
        """The first `count` LUN URLs it announces (JSON lines)."""
        return [json.loads(self.read_until('"serving"'))["fields"]["url"] for _ in range(count)]

    def wait_logged(self, want: str, timeout: float = 30.0) -> None:
        """Until its stderr has `want` (a log record): woken by each line it logs."""
        with self.logged:
            self.logged.wait_for(lambda: want in "".join(self.err) or self.err_closed, timeout)
            found = want in "".join(self.err)
        assert found, f"never logged {want!r} (exited: {self.err_closed}): {self.printed()}"

    def printed(self) -> str:
        """Everything printed on stdout and stderr so far."""
        with self.logged:
            return "".join(self.out) + "".join(self.err)

    def stop(self) -> str:
        """SIGTERM, then everything it printed; it must have exited 0."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        while (text := self.lines.get(timeout=30)) is not None:
            self.out.append(text)
        with self.logged:
            self.logged.wait_for(lambda: self.err_closed, 30)
        assert self.proc.returncode == 0, self.printed()
        return self.printed()


@contextmanager
def serve(*args: str, env: Mapping[str, str] | None = None) -> Iterator[Served]:
    proc = subprocess.Popen([sys.executable, "-m", "earmark.cli", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    try:
        yield Served(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def json_lines(printed: str) -> list[dict[str, Any]]:
    """Every line parsed, with the keys every JSON log line has."""
    records = [json.loads(text) for text in printed.splitlines() if text.strip()]
    for record in records:
        assert set(record) == {"time", "level", "event", "session", "initiator", "target",
                               "lun", "fields"}, record
    return records
