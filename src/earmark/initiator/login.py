"""The login loop both engines run, as steps: feed a PDU in, get the next request out.

An engine sends what :meth:`LoginSteps.start` gives, then feeds every PDU the
target answers into :meth:`LoginSteps.receive`, sending what it returns, until
``done`` (logged in: :meth:`LoginSteps.session` is the full feature phase) or
it raises the typed error a user can act on. The connection ending or the time
running out mid-exchange is the engine's to see; ``broken`` says what that
means. SendTargets (``earmark.initiator.discovery``) is an :class:`Exchange` too.
"""

from __future__ import annotations

from typing import Protocol

from earmark.initiator.errors import (
    AuthenticationFailedError,
    InitiatorError,
    LoginError,
    TargetNotFoundError,
)
from earmark.initiator.failure import ConnectionFailed
from earmark.initiator.session import InitiatorSession, Timeouts
from earmark.iscsi.errors import AuthenticationError, ProtocolError
from earmark.iscsi.login import InitiatorLogin, LoginFailed
from earmark.iscsi.opcodes import LoginStatus
from earmark.iscsi.pdu import LoginRequest, LoginResponse, Pdu

__all__ = ["Exchange", "Framing", "LoginSteps", "login_error"]


class Framing(Protocol):
    def set_full_feature(self, max_dsl: int, header_digest_on: bool,
                         data_digest_on: bool) -> None: ...


class Exchange(Protocol):
    """Request and answer steps an engine runs to their end: login, SendTargets."""

    @property
    def done(self) -> bool: ...

    def start(self) -> Pdu: ...

    def receive(self, pdu: Pdu) -> Pdu | None: ...

    def broken(self, exc: TimeoutError | ConnectionError | ConnectionFailed
               ) -> InitiatorError | None:
        """The error of an exchange cut short (None: it had its answer)."""


def login_error(exc: Exception, where: str) -> InitiatorError:
    """A failed login as the typed error a user can act on."""
    if isinstance(exc, LoginFailed):
        status = exc.status
        cls: type[LoginError] = LoginError
        if status in (LoginStatus.NOT_FOUND, LoginStatus.TARGET_REMOVED):
            cls = TargetNotFoundError
        elif status in (LoginStatus.AUTHENTICATION_FAILURE, LoginStatus.AUTHORIZATION_FAILURE):
            cls = AuthenticationFailedError
        return cls(f"{where}: {exc}", int(status))
    if isinstance(exc, AuthenticationError):
        return AuthenticationFailedError(f"{where}: {exc.reason}")
    if isinstance(exc, ProtocolError):
        return LoginError(f"{where}: the target broke the login: {exc.reason}")
    if isinstance(exc, TimeoutError):
        return LoginError(f"{where}: no login response in time")
    return LoginError(f"{where}: the target closed the connection during login ({exc})")


class LoginSteps:
    """One login exchange (:class:`InitiatorLogin`) with its failures typed."""

    __slots__ = ("done", "login", "where")

    def __init__(self, login: InitiatorLogin, where: str) -> None:
        self.login = login
        self.where = where
        #: Logged in: the exchange is over.
        self.done = False

    def start(self) -> LoginRequest:
        return self.login.start()

    def receive(self, pdu: Pdu) -> LoginRequest | None:
        """The next request to send, or None once logged in; a refusal or a broken
        exchange raises its :class:`InitiatorError`."""
        try:
            if not isinstance(pdu, LoginResponse):
                raise ProtocolError(f"{pdu.OPCODE.name} during login")
            req = self.login.receive(pdu)
        except (LoginFailed, ProtocolError) as exc:
            raise login_error(exc, self.where) from None
        self.done = req is None
        return req

    def broken(self, exc: TimeoutError | ConnectionError | ConnectionFailed) -> InitiatorError:
        """No answer in time, or the connection ended, before the login was done."""
        return login_error(exc, self.where)

    def full_feature(self, stream: Framing) -> None:
        """The stream frames as the login negotiated from the next PDU on."""
        params = self.login.params
        stream.set_full_feature(params.initiator_mrdsl, params.header_digest, params.data_digest)

    def session(self, now: float, timeouts: Timeouts) -> InitiatorSession:
        """The full feature phase the login led to."""
        login = self.login
        return InitiatorSession(
            login.params, cmd_sn=login.cmd_sn, exp_cmd_sn=login.exp_cmd_sn,
            max_cmd_sn=login.max_cmd_sn, exp_stat_sn=login.exp_stat_sn, now=now,
            timeouts=timeouts,
        )
