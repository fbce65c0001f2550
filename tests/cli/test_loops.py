"""What ``--loop`` means: auto is uvloop when it is installed, a loop asked for by name is
that one, and uvloop asked for where it is missing is an error that says how to get it."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

import earmark.cli.loops as loops


async def running_loop() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_is_uvloop_when_installed_and_a_named_loop_is_that_one() -> None:
    assert importlib.util.find_spec("uvloop") is not None  # a test dependency
    assert loops.loop_name() == loops.loop_name("auto") == "uvloop"
    assert loops.loop_name("asyncio") == "asyncio"
    assert loops.run(running_loop(), "uvloop").startswith("uvloop")
    assert loops.run(running_loop(), "asyncio").startswith("asyncio")


def test_uvloop_where_it_is_missing_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert loops.loop_name("auto") == "asyncio"
    with pytest.raises(loops.LoopUnavailableError, match="pip install uvloop"):
        loops.loop_name("uvloop")
