"""Byte ranges of a buffer that may lie in several runs of the arena.

A reserved buffer is usually one contiguous run, but a fragmented arena hands out
a short list of runs (see `Buffer`). Everything that moves data through a buffer
(Data-Out placement, Data-In PDUs, backing I/O) works on lists of memoryviews
cut from those runs, so a fragmented buffer costs list entries, never a copy.
"""

from __future__ import annotations

from collections.abc import Sequence


def cut(segments: Sequence[memoryview], start: int, end: int) -> list[memoryview]:
    """The views covering bytes [start, end) of the concatenation of `segments`."""
    out: list[memoryview] = []
    pos = 0
    for seg in segments:
        n = len(seg)
        if pos + n > start and pos < end:
            lo = max(start - pos, 0)
            hi = min(end - pos, n)
            out.append(seg[lo:hi])
        pos += n
        if pos >= end:
            break
    return out


def fill(views: Sequence[memoryview], data: bytes | memoryview) -> None:
    """Copy `data` across `views`, in order; the views hold exactly len(data) bytes."""
    src = memoryview(data)
    pos = 0
    for view in views:
        n = len(view)
        view[:] = src[pos : pos + n]
        pos += n


def total(views: Sequence[memoryview]) -> int:
    return sum(len(v) for v in views)
