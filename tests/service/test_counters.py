"""The counters the metrics read: kept where things happen, sans-I/O."""

from __future__ import annotations

from earmark.iscsi.negotiation import SessionParams
from earmark.target.counters import PortalCounters
from earmark.target.events import CloseConnection
from earmark.target.session import AdmissionPolicy, SessionConfig, TargetSession
from tests.target.test_portal import HOST, ISID, portal


def test_an_unanswered_ping_is_counted_once_as_a_nop_timeout() -> None:
    counters = PortalCounters()
    session = TargetSession(
        SessionParams(), {}, exp_cmd_sn=1, stat_sn=1, slots=[], counters=counters,
        config=SessionConfig(policy=AdmissionPolicy.NONE, nop_interval=1.0, nop_timeout=2.0))
    session.handle_timer(1.0)  # the ping goes out
    assert session.data_to_send() and counters.nop_timeouts == 0
    session.handle_timer(3.5)
    assert isinstance(session.next_event(), CloseConnection)
    assert counters.nop_timeouts == 1


def test_a_reinstating_login_is_counted() -> None:
    p = portal()
    first, second = p.connection_opened(), p.connection_opened()
    p.login_done(first, HOST, ISID)
    assert p.counters.reinstatements == 0
    p.login_done(second, HOST, ISID)
    assert p.counters.reinstatements == 1
