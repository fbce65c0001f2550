"""A loop device over the attached file (losetup, util-linux): a real block device.

The loop driver reads and writes the file with direct I/O off (its own page
cache is the block device's), in the LUN's block size, so a filesystem on it
sends us whole blocks.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

__all__ = ["LoopError", "attach_loop", "detach_loop"]


class LoopError(Exception):
    """losetup failed; its words."""


async def attach_loop(file: Path, block_size: int) -> str:
    """The loop device (``/dev/loopN``) now over ``file``; awaited, since attaching it
    opens and reads the file, which the caller must go on serving meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        "losetup", "--find", "--show", "--sector-size", str(block_size), str(file),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise LoopError(f"losetup could not attach {file}: {err.decode().strip()}")
    return out.decode().strip()


async def detach_loop(device: str) -> str | None:
    """``losetup -d``, while the caller serves the FLUSH and RELEASE it causes; None, or
    losetup's words when it failed."""
    proc = await asyncio.create_subprocess_exec(
        "losetup", "-d", device, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = await proc.communicate()
    return None if proc.returncode == 0 else err.decode(errors="replace").strip()
