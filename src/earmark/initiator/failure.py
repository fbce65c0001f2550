"""Why a connection ended, as a kind the recovery rules decide on, never as words.

The words (``reason``) are for people; the kind is for code: whether a command
that ran out of attempts failed because it got no answer (CommandTimeoutError)
or because its session went (SessionLostError) is read from ``kind``.
"""

from __future__ import annotations

import enum

__all__ = ["ConnectionFailed", "FailureKind"]


class FailureKind(enum.Enum):
    TIMEOUT = "timeout"
    """A command got no answer in time (nor its abort, or the target disowned it)."""
    PING = "ping"
    """The target did not answer a keepalive NOP-Out."""
    CLOSED = "closed"
    """The target closed or reset the connection, or the socket failed."""
    STALLED = "stalled"
    """The target stopped reading what we send."""
    PROTOCOL = "protocol"
    """The target broke the protocol (a bad PDU, a digest mismatch, a refused abort)."""
    DROPPED = "dropped"
    """The target asked for the connection or session to go (Async Message)."""
    LOCAL = "local"
    """We closed it: the device closes, a login failed, a connection is dropped."""


class ConnectionFailed(Exception):
    """A connection is gone: its ``kind`` and, for the log and the user, its ``reason``."""

    def __init__(self, kind: FailureKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
