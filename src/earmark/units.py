"""Sizes as people write them on command lines and in config files."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class SizeError(ValueError):
    """A size that does not parse; the message says how to write one."""


def parse_size(text: str, what: str) -> int:
    """Bytes from "1G", "512M", "64MiB", "4096" (binary multiples, as dd and truncate)."""
    m = _SIZE.match(text)
    if m is None or int(m.group(1)) == 0:
        raise SizeError(f"{what} {text!r} is not a size: write it like 1G, 512M or 64MiB")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]
