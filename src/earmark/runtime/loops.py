"""What the runtime must know of the event loop it runs on: how its transports keep the
bytes they are handed (we refill the buffers at once), and which clock times the work
the loop does itself. Which loop runs is the command line's (``earmark.cli.loops``)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence

_IOV_MAX = os.sysconf("SC_IOV_MAX")


def sender(transport: asyncio.WriteTransport) -> Callable[[Sequence[bytes | memoryview]], None]:
    """How to hand ``transport`` pieces whose buffers may be reused once the call returns.

    The target passes views of buffers it refills at once (a read's next window lands in
    the same slot buffer). uvloop's ``writelines`` (and asyncio's from Python 3.12 on)
    keeps unsent views themselves: the peer would then read the refilled buffer, another
    window's data, in place of this one's; Python 3.11's joins the pieces into one new
    bytes object first. Neither will do: the first corrupts, the second copies every
    byte (and for large reads holds megabytes outside the arena). So while nothing waits
    in the transport, the pieces go to the socket with one ``writev``, no copy, and only
    what the socket did not take is copied into the transport, behind which everything
    else then queues. A transport of our own that copies says so with
    ``COPIES_ON_WRITELINES = True``; one without a socket gets the joined copy.
    """
    if getattr(transport, "COPIES_ON_WRITELINES", False):
        return transport.writelines
    sock = transport.get_extra_info("socket")
    fd: int = sock.fileno() if sock is not None else -1

    def copied(pieces: Sequence[bytes | memoryview]) -> None:
        transport.write(b"".join(pieces))

    if fd < 0:
        return copied

    def send(pieces: Sequence[bytes | memoryview]) -> None:
        if transport.get_write_buffer_size() or len(pieces) > _IOV_MAX:
            return copied(pieces)
        try:
            sent = os.writev(fd, pieces)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the transport meets the error itself, and reports it
            return copied(pieces)
        if sent == sum(map(len, pieces)):
            return None
        for i, piece in enumerate(pieces):
            if sent < len(piece):
                return copied([piece[sent:], *pieces[i + 1:]])
            sent -= len(piece)
        return None

    return send


def stopwatch(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """The clock that times work ``loop`` does itself (a write the target runs on the loop).

    Not ``loop.time()``: uvloop's is read once per iteration, so a call timed with it takes
    no time. A loop that keeps its own time says so with a ``stopwatch`` method: the
    simulator's virtual clock, on which a call takes no time, so its runs stay the same run.
    """
    own: Callable[[], float] | None = getattr(loop, "stopwatch", None)
    return own if own is not None else time.perf_counter
