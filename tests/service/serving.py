"""`earmark serve` as a child process for the service tests: everything it prints kept, its
stdout read line by line until it has announced what it serves."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from tools.captured import captured_text


@dataclass
class Served:
    proc: subprocess.Popen[str]
    stderr: IO[bytes]
    #: Every stdout line read so far.
    out: list[str] = field(default_factory=list)
    #: Its stdout, line by line, from a thread (None: it closed), so a wait has a bound.
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            self.lines.put(text)
        self.lines.put(None)

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
        """Until its stderr has `want` (a log record), checked every 50 ms."""
        deadline = time.monotonic() + timeout
        while want not in self.printed():
            assert time.monotonic() < deadline, f"never logged {want!r}: {self.printed()}"
            assert self.proc.poll() is None, f"exited before logging {want!r}"
            time.sleep(0.05)

    def printed(self) -> str:
        """Everything printed on stdout and stderr so far."""
        return "".join(self.out) + captured_text(self.stderr)

    def stop(self) -> str:
        """SIGTERM, then everything it printed; it must have exited 0."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        while (text := self.lines.get(timeout=30)) is not None:
            self.out.append(text)
        assert self.proc.returncode == 0, self.printed()
        return self.printed()


@contextmanager
def serve(*args: str, env: Mapping[str, str] | None = None) -> Iterator[Served]:
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "earmark.cli", "serve", *args],
                                stdout=subprocess.PIPE, stderr=stderr, text=True,
                                env={**os.environ, **(env or {})})
        try:
            yield Served(proc, stderr)
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
