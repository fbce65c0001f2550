"""SendTargets=All in a discovery session, as steps: feed a PDU in, get the next one out.

After the login (:class:`~earmark.initiator.login.LoginSteps`) an engine sends
what :meth:`SendTargetsSteps.start` gives, then feeds every PDU the target
sends into :meth:`SendTargetsSteps.receive`, sending what it returns, until
``done``. Once the answer is complete the session is logged out; that part is
a courtesy: a target that closes instead of answering it has answered already.
"""

from __future__ import annotations

from earmark.initiator.device import new_isid
from earmark.initiator.errors import LoginError
from earmark.initiator.failure import ConnectionFailed
from earmark.initiator.login import LoginSteps
from earmark.initiator.url import IscsiUrl
from earmark.iscsi.discovery import DiscoveredTarget, TextRequester, send_targets_from_pairs
from earmark.iscsi.errors import ProtocolError
from earmark.iscsi.login import InitiatorLogin
from earmark.iscsi.opcodes import LogoutReason
from earmark.iscsi.pdu import LogoutRequest, LogoutResponse, Pdu, TextRequest, TextResponse

__all__ = ["SendTargetsSteps"]

_TEXT_ITT = 1
_LOGOUT_ITT = 2


class SendTargetsSteps:
    """The Text exchange and the logout of one discovery session."""

    __slots__ = ("_cmd_sn", "_exp_stat_sn", "_text", "done", "logging_out", "where")

    @staticmethod
    def login_steps(initiator_name: str, portal: IscsiUrl) -> LoginSteps:
        """The discovery session's login (no target name), its ISID a new one."""
        login = InitiatorLogin(initiator_name, target_name=None, isid=new_isid(),
                               chap=portal.chap, mutual=portal.mutual)
        return LoginSteps(login, f"discovery at {portal.portal}")

    def __init__(self, login: InitiatorLogin, where: str) -> None:
        self.where = where
        self._cmd_sn, self._exp_stat_sn = login.cmd_sn, login.exp_stat_sn
        self._text = TextRequester([("SendTargets", "All")], itt=_TEXT_ITT)
        #: The answer is complete; the logout is under way.
        self.logging_out = False
        self.done = False

    def start(self) -> TextRequest:
        return self._text.start(cmd_sn=self._cmd_sn, exp_stat_sn=self._exp_stat_sn)

    def receive(self, pdu: Pdu) -> Pdu | None:
        """What to send next (None: nothing, wait for the next PDU, or ``done``)."""
        if self.logging_out:
            self.done = isinstance(pdu, LogoutResponse)
            return None
        try:
            if not isinstance(pdu, TextResponse):
                raise ProtocolError(f"{pdu.OPCODE.name} instead of a Text Response")
            self._exp_stat_sn = (pdu.stat_sn + 1) & 0xFFFFFFFF
            req = self._text.receive(pdu, cmd_sn=self._cmd_sn, exp_stat_sn=self._exp_stat_sn)
        except ProtocolError as exc:
            raise self._failed(exc.reason) from None
        if req is not None:
            return req
        self.logging_out = True
        return LogoutRequest(reason=LogoutReason.CLOSE_SESSION, itt=_LOGOUT_ITT,
                             cmd_sn=self._cmd_sn, exp_stat_sn=self._exp_stat_sn, immediate=True)

    def broken(self, exc: TimeoutError | ConnectionError | ConnectionFailed) -> LoginError | None:
        """No answer in time, or the connection ended: the error, or None if the
        targets are known already (only the logout was left)."""
        if self.logging_out:
            self.done = True
            return None
        return self._failed(str(exc) or "timed out")

    def _failed(self, reason: str) -> LoginError:
        return LoginError(f"{self.where}: SendTargets failed: {reason}")

    @property
    def targets(self) -> list[DiscoveredTarget]:
        """What the target listed, once the answer is complete."""
        return send_targets_from_pairs(self._text.pairs)
