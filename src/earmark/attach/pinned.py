"""The daemon's memory, fixed before it serves: locked, and marked as the kernel's writeback.

A FUSE daemon under a loop device is part of the kernel's writeback path: the
kernel may need our answer to free memory. So, as iscsid does for the kernel
initiator, the process asks for ``PR_SET_IO_FLUSHER`` (its allocations do not
recurse into filesystem I/O, and it may dip into reserves), and locks all its
pages, present and future (``mlockall``), so that none of what it serves from
is swapped out, or must be faulted back in, while memory is short. The arenas
are allocated before the mount and ``MCL_CURRENT`` faults every page of them
in, so the locked set is already the working set.

It also asks the OOM killer to pass it by (``oom_score_adj`` -1000, as iscsid and
glusterfs's FUSE daemon do): in a memory cgroup shared with the writers, the locked
daemon is the biggest process, the one a memcg OOM would kill, and killing the
path that writes back is the one choice that frees nothing and fails every writer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["PinError", "pin_memory"]

_PR_SET_IO_FLUSHER = 57
_MCL_CURRENT, _MCL_FUTURE = 1, 2
_OOM_SCORE_ADJ_MIN = -1000  # linux/oom.h: never chosen


class PinError(Exception):
    """mlockall refused (past RLIMIT_MEMLOCK without CAP_IPC_LOCK); its words."""


def pin_memory() -> list[str]:
    """Lock every page of the process, present and future, mark it an I/O flusher and
    keep the OOM killer off it.

    Without CAP_SYS_RESOURCE (many containers) the kernel refuses the last two; as
    iscsid does, we serve on and return the warnings to print, not an error."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mlockall(_MCL_CURRENT | _MCL_FUTURE) != 0:
        raise PinError(f"mlockall: {os.strerror(ctypes.get_errno())} (RLIMIT_MEMLOCK)")
    warnings = []
    if libc.prctl(_PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0:
        warnings.append(f"prctl(PR_SET_IO_FLUSHER): {os.strerror(ctypes.get_errno())} (it "
                        "needs CAP_SYS_RESOURCE); serving without it")
    try:
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write(str(_OOM_SCORE_ADJ_MIN))
    except OSError as exc:
        warnings.append(f"oom_score_adj {_OOM_SCORE_ADJ_MIN}: {exc.strerror} (it needs "
                        "CAP_SYS_RESOURCE); the OOM killer may choose this daemon")
    return warnings
