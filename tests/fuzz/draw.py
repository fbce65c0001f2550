"""Choices drawn from a fuzz input, deterministically and without atheris.

The harnesses read their inputs through this rather than atheris'
``FuzzedDataProvider``, so the corpus replay in the default suite decodes every saved
input exactly as the fuzzer did, with atheris not installed. An input that runs out
yields zeros: every byte string is a valid input, and a short one a short run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Draw:
    __slots__ = ("_at", "_data")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    @property
    def left(self) -> int:
        return len(self._data) - self._at

    def take(self, n: int) -> bytes:
        out = self._data[self._at : self._at + n]
        self._at += len(out)
        return out

    def uint(self, nbytes: int) -> int:
        """A big-endian unsigned integer of ``nbytes`` (short: what is left)."""
        return int.from_bytes(self.take(nbytes), "big")

    def below(self, n: int) -> int:
        """An integer in [0, n), from one byte when n fits in one, else from four."""
        return self.uint(1 if n <= 256 else 4) % n

    def flag(self) -> bool:
        return bool(self.uint(1) & 1)

    def pick(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    def blob(self, limit: int) -> bytes:
        """Bytes of a drawn length, at most ``limit`` (a 2-byte length, then the bytes)."""
        return self.take(self.uint(2) % (limit + 1))

    def rest(self) -> bytes:
        return self.take(self.left)
