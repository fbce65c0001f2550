"""The daemon's memory, fixed before it serves: locked, and marked as the kernel's writeback.

A FUSE daemon under a loop device is part of the kernel's writeback path: the
kernel may need our answer to free memory. So, as iscsid does for the kernel
initiator, the process asks for ``PR_SET_IO_FLUSHER`` (its allocations do not
recurse into filesystem I/O, and it may dip into reserves), and locks all its
pages, present and future (``mlockall``), so that none of what it serves from
is swapped out, or must be faulted back in, while memory is short. The arenas
are allocated before the mount and ``MCL_CURRENT`` faults every page of them
in, so the locked set is already the working set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["PinError", "pin_memory"]

_PR_SET_IO_FLUSHER = 57
_MCL_CURRENT, _MCL_FUTURE = 1, 2


class PinError(Exception):
    """mlockall refused (past RLIMIT_MEMLOCK without CAP_IPC_LOCK); its words."""


def pin_memory() -> str | None:
    """Lock every page of the process, present and future, and mark it an I/O flusher.

    Without CAP_SYS_RESOURCE (many containers) the kernel refuses the flusher mark; as
    iscsid does, we serve on and return the warning to print, not an error."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mlockall(_MCL_CURRENT | _MCL_FUTURE) != 0:
        raise PinError(f"mlockall: {os.strerror(ctypes.get_errno())} (RLIMIT_MEMLOCK)")
    if libc.prctl(_PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0:
        return (f"prctl(PR_SET_IO_FLUSHER): {os.strerror(ctypes.get_errno())} (it needs "
                "CAP_SYS_RESOURCE); serving without it")
    return None
