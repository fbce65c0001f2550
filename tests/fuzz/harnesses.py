"""The fuzz harnesses, by name: each is `tests.fuzz.harness_<name>.one_input(data)`.

`benchmarks/fuzz.py` fuzzes them with atheris; `test_corpus.py` replays what they
found (``corpus/<name>/``) and every crash ever found (``crashes/<name>/``) through
the same functions in the default suite. Names only: the fuzzer imports a harness
under atheris' instrumentation, so nothing here may import one first.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Name, and the largest input worth trying (libFuzzer's -max_len).
HARNESSES: dict[str, int] = {"stream": 16384, "text": 4096, "login": 4096, "session": 4096}


def module_name(name: str) -> str:
    return f"tests.fuzz.harness_{name}"


def corpus_dir(name: str) -> Path:
    return HERE / "corpus" / name


def crashes_dir(name: str) -> Path:
    return HERE / "crashes" / name
