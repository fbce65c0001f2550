"""A child process's output captured in a temporary file, read back while it still writes.

The child writes through the same open file description as ours, so the two share its
offset: seeking back to read would move where the child's next line lands, over what it
wrote before (a JSON log line cut to `vent": ...` in the middle of the file was this).
`pread` reads from the start without moving the offset."""

from __future__ import annotations

import os
from typing import IO

__all__ = ["captured_text"]


def captured_text(file: IO[bytes]) -> str:
    fd = file.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
