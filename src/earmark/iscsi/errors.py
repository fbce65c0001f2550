"""Typed errors for everything a peer can get wrong.

Callers map these to protocol actions (Reject PDU, login status, dropping the
connection), so a peer must never be able to provoke any other exception type.
"""

from .opcodes import RejectReason


class ProtocolError(Exception):
    """A peer sent something RFC 7143 forbids; ``reason`` says exactly what.

    ``reject`` is the Reject reason that answers the offending PDU, chosen where
    the error is found (an unknown opcode is COMMAND_NOT_SUPPORTED), or None where
    no Reject can quote it (its header is not to be trusted).
    """

    def __init__(
        self, reason: str, *, reject: RejectReason | None = RejectReason.PROTOCOL_ERROR
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reject = reject


class DigestError(ProtocolError):
    """A CRC32C digest did not match.

    Kept apart because a data digest error leaves the stream in sync (the PDU
    can be rejected and the connection kept), while a header digest error
    does not.
    """

    def __init__(self, reason: str, *, header: bool) -> None:
        super().__init__(reason, reject=None if header else RejectReason.DATA_DIGEST_ERROR)
        self.header = header


class NegotiationError(ProtocolError):
    """Text-key negotiation broke a rule that ends the login."""


class AuthenticationError(ProtocolError):
    """CHAP failed; messages never contain secrets or responses."""
