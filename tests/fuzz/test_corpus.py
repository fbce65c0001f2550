"""The saved fuzz corpus and every crash ever found, replayed through the harnesses
(no atheris: the same functions, uninstrumented)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fuzz.harnesses import HARNESSES, corpus_dir, crashes_dir, module_name


def _inputs(name: str) -> list[Path]:
    return sorted(p for d in (corpus_dir(name), crashes_dir(name)) if d.is_dir()
                  for p in d.iterdir() if p.is_file())


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_corpus_replays_clean(name: str) -> None:
    one_input: Callable[[bytes], None] = importlib.import_module(module_name(name)).one_input
    inputs = _inputs(name)
    assert inputs, f"no saved inputs for the {name} harness"
    for path in inputs:
        try:
            one_input(path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"{path.relative_to(corpus_dir(name).parent.parent)}: "
                                 f"{exc!r}") from exc
