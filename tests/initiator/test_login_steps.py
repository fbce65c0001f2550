"""The login and SendTargets loops both engines run, fed PDU by PDU, without a socket."""

from __future__ import annotations

import pytest

from earmark.initiator.discovery import SendTargetsSteps
from earmark.initiator.errors import LoginError, TargetNotFoundError
from earmark.initiator.failure import ConnectionFailed, FailureKind
from earmark.initiator.login import LoginSteps
from earmark.initiator.session import Timeouts
from earmark.iscsi.login import InitiatorLogin, TargetEntry, TargetLogin
from earmark.iscsi.pdu import (
    LoginRequest,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    TextRequest,
    TextResponse,
)
from earmark.iscsi.text import encode_text

DISK = "iqn.2024-01.org.earmark:disk"


def steps(target: str | None = DISK) -> LoginSteps:
    login = InitiatorLogin("iqn.2024-01.org.earmark:me", target_name=target, isid=0x80_0000_0001)
    return LoginSteps(login, "login to here")


def log_in(ini: LoginSteps, tgt: TargetLogin) -> int:
    """Run the exchange to its end; the number of requests sent."""
    req: LoginRequest | None = ini.start()
    sent = 0
    while req is not None:
        sent += 1
        resp = tgt.receive(req, exp_cmd_sn=req.cmd_sn, max_cmd_sn=req.cmd_sn + 31, stat_sn=sent)
        req = ini.receive(resp)
    return sent


def test_a_login_runs_to_a_session_that_starts_where_the_login_ended() -> None:
    ini = steps()
    assert log_in(ini, TargetLogin({DISK: TargetEntry(DISK)}, portal_group_tag=1)) >= 1
    session = ini.session(5.0, Timeouts(command=7.0))
    assert (session.cmd_sn, session.max_cmd_sn) == (1, 32)
    assert session.exp_stat_sn == ini.login.exp_stat_sn and session.timeouts.command == 7.0


def test_a_refusal_and_a_broken_exchange_are_typed_errors() -> None:
    with pytest.raises(TargetNotFoundError, match="login to here"):
        log_in(steps("iqn.2024-01.org.earmark:nope"),
               TargetLogin({DISK: TargetEntry(DISK)}, portal_group_tag=1))
    ini = steps()
    ini.start()
    with pytest.raises(LoginError, match="broke the login: NOP_IN during login"):
        ini.receive(NopIn())
    assert "no login response in time" in str(steps().broken(TimeoutError()))
    lost = steps().broken(ConnectionFailed(FailureKind.CLOSED, "reset by peer"))
    assert type(lost) is LoginError and "closed the connection during login (reset" in str(lost)


def discovery() -> SendTargetsSteps:
    ini = steps(None)
    log_in(ini, TargetLogin({DISK: TargetEntry(DISK)}, portal_group_tag=1))
    return SendTargetsSteps(ini.login, "discovery at here")


def test_send_targets_asks_collects_and_logs_out() -> None:
    st = discovery()
    req = st.start()
    assert isinstance(req, TextRequest) and req.immediate
    answer = encode_text([("TargetName", DISK), ("TargetAddress", "127.0.0.1:3260,1")])
    logout = st.receive(TextResponse(itt=req.itt, stat_sn=9, data=answer))
    assert isinstance(logout, LogoutRequest) and logout.exp_stat_sn == 10
    assert st.logging_out and not st.done
    assert st.receive(NopIn()) is None and not st.done  # not the answer: wait on
    assert st.receive(LogoutResponse(itt=logout.itt)) is None and st.done
    assert [t.name for t in st.targets] == [DISK]


def test_send_targets_fails_in_words_until_the_answer_is_in() -> None:
    st = discovery()
    st.start()
    with pytest.raises(LoginError, match="SendTargets failed: NOP_IN instead of a Text"):
        st.receive(NopIn())
    st = discovery()
    error = st.broken(TimeoutError())
    assert error is not None and str(error) == "discovery at here: SendTargets failed: timed out"
    req = st.start()
    st.receive(TextResponse(itt=req.itt, data=encode_text([("TargetName", DISK)])))
    assert st.broken(ConnectionError("gone")) is None and st.done  # only the logout was left
