"""key=value text of Login and Text PDUs (RFC 7143 §6.1).

Text is UTF-8 ``key=value`` entries each ended by a NUL. A sender may split
the text across PDUs at any byte (C bit), so decoding happens only once the
last piece has arrived; :class:`TextAccumulator` holds the pieces.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import ProtocolError

TextPairs = list[tuple[str, str]]

MAX_KEY_LENGTH = 63
MAX_VALUE_LENGTH = 255
MAX_LONG_VALUE_LENGTH = 8192
"""Large binary values (CHAP/SRP/Kerberos exchanges) may be this long as text."""
DEFAULT_TEXT_LIMIT = 65536
"""Receivers must take at least 8192 bytes per negotiation (§6.1); we take more."""

_KEY = re.compile(r"[A-Za-z0-9.\-+@_]+")
_LONG_VALUE_PREFIXES = ("CHAP_C", "CHAP_R", "SRP_", "KRB_")


def _value_limit(key: str) -> int:
    if key.startswith(_LONG_VALUE_PREFIXES):
        return MAX_LONG_VALUE_LENGTH
    return MAX_VALUE_LENGTH


def _check_pair(key: str, value_length: int, at: int) -> None:
    if not key:
        raise ProtocolError(f"text entry at offset {at} has an empty key")
    if len(key) > MAX_KEY_LENGTH:
        raise ProtocolError(
            f"key {key[:MAX_KEY_LENGTH]!r}... at offset {at} is {len(key)} bytes, "
            f"longer than {MAX_KEY_LENGTH}"
        )
    if not _KEY.fullmatch(key):
        raise ProtocolError(f"key {key!r} at offset {at} contains characters RFC 7143 forbids")
    limit = _value_limit(key)
    if value_length > limit:
        raise ProtocolError(f"value of {key} is {value_length} bytes, longer than {limit}")


def decode_text(data: bytes | memoryview) -> TextPairs:
    """Parse complete text; repeated keys are kept (SendTargets repeats them)."""
    raw = bytes(data)
    if not raw:
        return []
    if raw[-1] != 0:
        raise ProtocolError("text does not end with a NUL")
    # Some senders pad text with extra NULs; only a run at the end is tolerated.
    raw = raw.rstrip(b"\0")
    pairs: TextPairs = []
    at = 0
    for entry in raw.split(b"\0"):
        if not entry:
            raise ProtocolError(f"empty text entry at offset {at}")
        key_raw, sep, value_raw = entry.partition(b"=")
        if not sep:
            shown = entry[:MAX_KEY_LENGTH].decode("utf-8", "replace")
            raise ProtocolError(f"text entry {shown!r} at offset {at} has no '='")
        try:
            key = key_raw.decode("ascii")
            value = value_raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"text entry at offset {at} is not valid UTF-8") from None
        _check_pair(key, len(value_raw), at)
        pairs.append((key, value))
        at += len(entry) + 1
    return pairs


def encode_text(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Encode pairs; a bad pair is our own bug, so it raises ValueError."""
    out = bytearray()
    for key, value in pairs:
        raw = value.encode("utf-8")
        try:
            _check_pair(key, len(raw), len(out))
        except ProtocolError as exc:
            raise ValueError(exc.reason) from None
        if b"\0" in raw:
            raise ValueError(f"value of {key} contains a NUL")
        out += key.encode("ascii") + b"=" + raw + b"\0"
    return bytes(out)


def split_text(text: bytes, max_segment: int) -> list[bytes]:
    """Pieces of at most ``max_segment`` bytes; all but the last go with C=1."""
    if not text:
        return [b""]
    return [text[i : i + max_segment] for i in range(0, len(text), max_segment)]


class TextAccumulator:
    """Joins text split across PDUs with the C bit until the final piece."""

    __slots__ = ("_limit", "_parts", "_size")

    def __init__(self, limit: int = DEFAULT_TEXT_LIMIT) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def pending(self) -> bool:
        """True while a C=1 piece awaits its continuation."""
        return bool(self._parts)

    def add(self, data: bytes | memoryview, continue_: bool) -> TextPairs | None:
        """Pairs once the text is complete (``continue_`` false), else None."""
        self._size += len(data)
        if self._size > self._limit:
            size = self._size
            self.reset()
            raise ProtocolError(f"text spanning PDUs is {size} bytes, more than {self._limit}")
        self._parts.append(bytes(data))
        if continue_:
            return None
        text = b"".join(self._parts)
        self.reset()
        return decode_text(text)

    def reset(self) -> None:
        self._parts = []
        self._size = 0
