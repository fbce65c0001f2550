"""Which event loop runs a command: uvloop when installed, or asyncio's own.

uvloop is an optional speed-up behind the same code (the protocol core never
knows which loop feeds it), so every command that runs a loop takes the same
``--loop auto|asyncio|uvloop`` choice and goes through :func:`run`. What the
runtime must know of the loop it runs on (how its transports keep what they
are handed) is ``earmark.runtime.loops``.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

LOOPS = ("auto", "asyncio", "uvloop")


class LoopUnavailableError(ValueError):
    """``--loop uvloop`` on a machine without uvloop; the message says how to get it."""


def loop_name(choice: str = "auto") -> str:
    """The loop ``choice`` means here: ``auto`` is uvloop when it is installed."""
    uvloop_installed = importlib.util.find_spec("uvloop") is not None
    if choice == "auto":
        return "uvloop" if uvloop_installed else "asyncio"
    if choice == "uvloop" and not uvloop_installed:
        raise LoopUnavailableError("--loop uvloop: uvloop is not installed (pip install uvloop)")
    return choice


def running() -> str:
    """The running loop's name as ``--loop`` spells it (for a command to say what ran)."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") \
        else "asyncio"


def run(coro: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run`` on the loop ``choice`` names."""
    if loop_name(choice) == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
