"""Typed failures of the initiator, one class per thing a user can fix differently.

The CLI turns any :class:`InitiatorError` into one line and exit code 2; library
callers catch the class that matches what they can do about it (re-type a URL,
fix credentials, wait for the target). SCSI-level failures (CHECK CONDITION)
are :class:`earmark.scsi.sense.ScsiError`, raised as they come.
"""

from __future__ import annotations


class InitiatorError(Exception):
    """Base of everything the initiator raises for a reason outside this process."""


class BadUrlError(InitiatorError, ValueError):
    """The iSCSI URL cannot be parsed; the message says which part is wrong."""


class ConnectError(InitiatorError):
    """The portal could not be reached (refused, unreachable, timed out)."""

    @classmethod
    def of(cls, portal: str, exc: OSError, timeout: float) -> ConnectError:
        """Why connecting to ``portal`` failed, in words (a TimeoutError: ``timeout`` ran out)."""
        if isinstance(exc, TimeoutError):
            return cls(f"cannot reach {portal}: timed out after {timeout:g} s")
        return cls(f"cannot reach {portal}: {exc.strerror or exc}")


class LoginError(InitiatorError):
    """The target refused the login or broke it; ``status`` is its login status if it sent one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TargetNotFoundError(LoginError):
    """The portal answered but has no target of that name (or hides it from us)."""


class AuthenticationFailedError(LoginError):
    """CHAP was refused by the target, or the target failed to prove itself (mutual CHAP)."""


class SessionLostError(InitiatorError):
    """The connection failed and could not be re-established in time; commands were not done."""


class CommandTimeoutError(SessionLostError):
    """A command got no answer in time, even after the session was re-established."""


class CommandAbortedError(CommandTimeoutError):
    """A command got no answer in time and the target aborted it on our request (ABORT
    TASK); the device sends it again while it has attempts left."""


class ScsiStatusError(InitiatorError):
    """The target ended a command with a status other than GOOD or CHECK CONDITION
    (BUSY, RESERVATION CONFLICT, TASK SET FULL...): the command was not executed."""

    def __init__(self, status: int) -> None:
        super().__init__(f"command ended with SCSI status 0x{status:02x}")
        self.status = status


class TargetFailureError(InitiatorError):
    """The target answered "target failure" at the iSCSI level (RFC 7143 §11.4.3)."""


class CommandRejectedError(InitiatorError):
    """The target rejected the command PDU itself (Reject PDU); ``reason`` is its code."""

    def __init__(self, reason: int) -> None:
        super().__init__(f"target rejected the command PDU (reason 0x{reason:02x})")
        self.reason = reason


class CacheLostError(InitiatorError):
    """The target powered on again (a unit attention said so) while writes it had
    acknowledged were not yet covered by a flush: its volatile cache may have held them,
    so the flush that would have made them durable cannot vouch for them (fsync's EIO,
    as Linux reports a lost writeback once). Write them again to have them."""
