"""The target's portal and login phase, sans-I/O (no sockets): reinstatement along a nexus,
fair shares of the arena, TSIHs, the login window, ACLs and target lookup."""

from __future__ import annotations

import pytest

from earmark.iscsi.discovery import parse_send_targets
from earmark.iscsi.errors import ProtocolError
from earmark.iscsi.login import LOGIN_MAX_SEGMENT, InitiatorLogin, TargetEntry
from earmark.iscsi.negotiation import SessionParams
from earmark.iscsi.opcodes import LoginStatus
from earmark.iscsi.pdu import LoginRequest, LoginResponse, NopOut, WireBytes
from earmark.memory import Arena
from earmark.memory.levels import TargetLevel
from earmark.scsi.disk import Disk
from earmark.target.backing import MemoryBacking
from earmark.target.login_phase import LoginPhase, LoginStep, Refused
from earmark.target.portal import START, PortalLimits, TargetPortal, TargetSpec, WaitFor
from earmark.target.session import AdmissionPolicy, SessionConfig, TargetSession
from earmark.target.unit import LogicalUnit
from tests.wire_reader import WireReader

HOST = "iqn.2026-11.org.earmark:host"
OTHER = "iqn.2026-11.org.earmark:other"
DISK = "iqn.2026-11.org.earmark:disk"
PRIVATE = "iqn.2026-11.org.earmark:private"
ISID = 0x80_1234_5678
RECV = 128 << 10


def unit() -> LogicalUnit:
    return LogicalUnit(0, Disk(2048, "PORTAL"), MemoryBacking(1 << 20))


def portal(memory: int = 64 << 20, policy: AdmissionPolicy = AdmissionPolicy.RESERVE,
           max_slots: int = 64) -> TargetPortal:
    return TargetPortal(
        [TargetSpec(TargetEntry(DISK), {0: unit()}),
         TargetSpec(TargetEntry(PRIVATE, allowed_initiators=frozenset({HOST})), {3: unit()})],
        arena=Arena(memory, levels=TargetLevel), config=SessionConfig(policy=policy),
        recv_bytes=RECV, max_slots=max_slots,
    )


# ----------------------------------------------------------------- reinstatement


def test_a_second_login_of_a_nexus_waits_until_the_first_connection_drained() -> None:
    p = portal()
    a, b = p.connection_opened(), p.connection_opened()
    assert p.login_done(a, HOST, ISID) is START
    assert p.login_done(b, HOST, ISID) == WaitFor(a)
    assert p.drained(a) == [b]
    # The nexus is b's now: b's own end lets the next login start at once.
    assert p.drained(b) == []
    assert p.login_done(p.connection_opened(), HOST, ISID) is START


def test_another_isid_or_initiator_is_another_nexus() -> None:
    p = portal()
    assert p.login_done(p.connection_opened(), HOST, ISID) is START
    assert p.login_done(p.connection_opened(), HOST, ISID + 1) is START
    assert p.login_done(p.connection_opened(), OTHER, ISID) is START


def test_a_drained_session_leaves_nothing_to_wait_for() -> None:
    p = portal()
    a = p.connection_opened()
    assert p.login_done(a, HOST, ISID) is START
    assert p.drained(a) == []
    assert p.login_done(p.connection_opened(), HOST, ISID) is START


def test_the_latest_login_reinstates_one_still_waiting_and_waits_for_the_whole_chain() -> None:
    p = portal()
    a, b, c = (p.connection_opened() for _ in range(3))
    assert p.login_done(a, HOST, ISID) is START
    assert p.login_done(b, HOST, ISID) == WaitFor(a)
    # A waiting login is itself the nexus's session: c reinstates b, not a.
    assert p.login_done(c, HOST, ISID) == WaitFor(b)
    # b is gone (c ended it), but b's predecessor still runs I/O: c must wait on.
    assert p.drained(b) == []
    assert p.drained(a) == [c]
    assert p.drained(c) == []


def test_a_waiter_released_before_it_is_gone_is_released_once() -> None:
    """a drains while b, ended by c's login, is closing but not yet gone: b is told it
    may start (and, closing, does not); c starts only once b is gone."""
    p = portal()
    a, b, c = (p.connection_opened() for _ in range(3))
    p.login_done(a, HOST, ISID)
    p.login_done(b, HOST, ISID)
    assert p.login_done(c, HOST, ISID) == WaitFor(b)
    assert p.drained(a) == [b]
    assert p.drained(b) == [c]


def test_drained_releases_every_login_of_every_nexus_it_held_up() -> None:
    p = portal()
    a, b, c, d = (p.connection_opened() for _ in range(4))
    p.login_done(a, HOST, ISID)
    p.login_done(b, OTHER, ISID)
    assert p.login_done(c, HOST, ISID) == WaitFor(a)
    assert p.login_done(d, OTHER, ISID) == WaitFor(b)
    assert p.drained(b) == [d]
    assert p.drained(a) == [c]


# ----------------------------------------------------------------- fair shares


def session(p: TargetPortal) -> TargetSession:
    return TargetSession(SessionParams(), {}, exp_cmd_sn=0, stat_sn=0, slots=[],
                         config=p.config)


def start_sessions(p: TargetPortal, n: int) -> list[tuple[int, TargetSession]]:
    out = []
    for _ in range(n):
        conn_id, s = p.connection_opened(), session(p)
        assert p.session_started(conn_id, s)
        out.append((conn_id, s))
    return out


@pytest.mark.parametrize(("sessions", "share"), [(1, 15), (2, 10), (3, 7), (6, 4), (40, 1)])
def test_each_session_gets_its_share_and_one_more_login_still_fits(sessions: int,
                                                                  share: int) -> None:
    p = portal(memory=8 << 20)
    per_slot = sum(p.slot_claim.values())
    assert per_slot == 256 + (256 << 10)
    started = start_sessions(p, sessions)
    assert {s.slot_target for _, s in started} == {share}
    assert p.fair_share() == share
    if share > 1:  # at the floor of one slot each, a session always gets its first slot
        held = sessions * share * per_slot + (sessions + 1) * RECV
        assert held + RECV + per_slot <= p.arena.capacity, "no room for the next login"


def test_shares_are_capped_and_grow_back_when_a_session_ends() -> None:
    p = portal(memory=64 << 20, max_slots=40)
    assert {s.slot_target for _, s in start_sessions(p, 2)} == {40}
    p = portal(memory=8 << 20)
    (_, sa), (_, sb), (c, _) = start_sessions(p, 3)
    assert sb.slot_target == 7
    # Two sessions left; the closing connection's receive buffer still counts (it is
    # given back just after), so 9 each rather than the 10 of two sessions at rest.
    assert p.connection_closed(c)
    assert sa.slot_target == sb.slot_target == 9
    # A connection without a session changes no share.
    assert not p.connection_closed(p.connection_opened())


def test_without_reserve_there_are_no_shares_and_no_first_slot() -> None:
    p = portal(policy=AdmissionPolicy.NONE)
    s = session(p)
    before = s.slot_target
    assert not p.session_started(p.connection_opened(), s)
    assert s.slot_target == before
    assert p.first_slot is None and dict(p.connection_claim) == {TargetLevel.RECV: RECV}
    assert p.login_window == p.config.window


def test_under_reserve_a_connection_brings_its_first_slot() -> None:
    p = portal()
    assert dict(p.connection_claim) == {TargetLevel.RECV: RECV, TargetLevel.SLOT: 256,
                                        TargetLevel.BUFFER: 256 << 10}
    assert p.first_slot == p.slot_claim and p.login_window == 1
    assert p.login_wants["MaxBurstLength"] == str(256 << 10)


# ------------------------------------------------------------------ logins


def test_a_login_holds_one_login_pdu_not_a_session() -> None:
    p = portal()
    # BHS, the largest AHS, both digests and an 8 KiB data segment (RFC 7143 caps login
    # segments there), in one power-of-two run: far from a session's receive buffer and
    # command slot.
    assert dict(p.login_claim) == {TargetLevel.RECV: p.login_bytes}
    assert LOGIN_MAX_SEGMENT + 48 <= p.login_bytes <= 16 << 10
    assert sum(p.connection_claim.values()) > 20 * p.login_bytes


def test_unfinished_logins_past_their_share_close_the_oldest_first() -> None:
    p = portal(memory=8 << 20)
    # 1/32 of the arena, in whole granules of the login's claim.
    share = (8 << 20) // 32 // p.arena.cost(p.login_bytes)
    assert p.max_logins == share
    ids = [p.connection_opened() for _ in range(share + 3)]
    evicted = [p.login_started(conn, "10.0.0.9", 0.0) for conn in ids]
    assert evicted[:share] == [[]] * share
    assert evicted[share:] == [[ids[0]], [ids[1]], [ids[2]]]
    # A login that finished is no longer a candidate, and leaves room.
    p.login_finished(ids[3])
    assert p.login_started(p.connection_opened(), "10.0.0.9", 0.0) == []
    assert p.login_started(p.connection_opened(), "10.0.0.9", 0.0) == [ids[4]]


def test_a_login_the_target_answered_outlasts_the_silent_ones_that_came_after_it() -> None:
    p = portal(memory=8 << 20)
    talker, *mute = [p.connection_opened() for _ in range(p.max_logins)]
    assert all(p.login_started(conn, "10.0.0.9", 0.0) == [] for conn in [talker, *mute])
    p.login_answered(talker)
    # A flood behind it: the silent ones go, oldest first; the one that speaks stays.
    flood = [p.connection_opened() for _ in range(len(mute) + 2)]
    evicted = [p.login_started(conn, "10.0.0.8", 0.0) for conn in flood]
    assert evicted[: len(mute)] == [[old] for old in mute]
    assert evicted[len(mute):] == [[flood[0]], [flood[1]]]
    # Only when every other login is one the target answered does its age count again.
    for conn in flood[2:]:
        p.login_answered(conn)
    assert p.login_started(p.connection_opened(), "10.0.0.8", 0.0) == [talker]


def test_past_max_connections_the_oldest_login_goes_and_then_newcomers_are_refused(
        caplog: pytest.LogCaptureFixture) -> None:
    p = TargetPortal([], arena=Arena(8 << 20, levels=TargetLevel), config=SessionConfig(),
                     limits=PortalLimits(max_connections=2))
    a, b = p.connection_opened(), p.connection_opened()
    assert p.login_started(a, "10.0.0.1", 0.0) == [] and p.login_started(b, "10.0.0.1", 0.0) == []
    # Full, of unfinished logins: a newcomer closes the oldest rather than be refused.
    c = p.connection_opened()
    assert p.login_started(c, "10.0.0.2", 0.0) == [a]
    p.connection_closed(a)
    p.login_finished(b)
    p.login_finished(c)
    with caplog.at_level("WARNING", logger="earmark.target.portal"):
        for n in range(5):  # refused: each closes at once, as the runtime does
            c = p.connection_opened()
            assert p.login_started(c, "10.0.0.2", float(n)) is None
            p.connection_closed(c)
        c = p.connection_opened()
        assert p.login_started(c, "10.0.0.2", 61.0) is None
        p.connection_closed(c)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and all("refusing connections from 10.0.0.2" in m for m in said)
    assert "4 more refused since" in said[1]
    p.connection_closed(b)  # room again
    assert p.login_started(p.connection_opened(), "10.0.0.2", 62.0) == []


def test_fair_shares_count_an_unfinished_login_at_its_own_size() -> None:
    p = portal(memory=16 << 20)
    s = session(p)
    conn = p.connection_opened()
    p.login_finished(conn)
    p.session_started(conn, s)
    alone = s.slot_target
    for _ in range(40):  # strangers that connect and send nothing
        p.login_started(p.connection_opened(), "10.0.0.3", 0.0)
    p.session_started(conn, s)
    per_slot = sum(p.slot_claim.values())
    assert alone - s.slot_target <= 40 * p.login_bytes // per_slot + 1


# ----------------------------------------------------------------------- TSIH


def test_tsihs_are_never_0_and_wrap_at_16_bits() -> None:
    p = portal()
    conn = p.connection_opened()
    got = [p.allocate_tsih(conn) for _ in range(0xFFFF + 2)]
    assert got[:3] == [1, 2, 3] and got[0xFFFE] == 0xFFFF and got[0xFFFF:] == [1, 2]
    assert 0 not in got


def test_a_tsih_held_by_a_live_session_is_skipped_until_it_ends() -> None:
    p = portal()
    live, busy = p.connection_opened(), p.connection_opened()
    assert p.allocate_tsih(live) == 1
    for _ in range(0xFFFF - 1):
        p.allocate_tsih(busy)
    assert p.allocate_tsih(busy) == 2, "1 is still live's"
    p.connection_closed(live)
    assert [p.allocate_tsih(busy) for _ in range(0xFFFF - 1)][-1] == 1


# ------------------------------------------------------------ login phase, ACL


def responses(pieces: list[WireBytes]) -> LoginResponse:
    (resp,) = WireReader(LOGIN_MAX_SEGMENT).feed(b"".join(bytes(x) for x in pieces))
    assert isinstance(resp, LoginResponse)
    return resp


def log_in(p: TargetPortal, target: str | None, initiator: str = HOST,
           chap: tuple[str, str] | None = None,
           isid: int = ISID) -> tuple[LoginPhase, LoginStep, InitiatorLogin]:
    conn_id = p.connection_opened()
    phase = LoginPhase(p, conn_id)
    ini = InitiatorLogin(initiator, target_name=target, isid=isid, cmd_sn=77, chap=chap)
    req: LoginRequest | None = ini.start()
    step: LoginStep = None
    while req is not None:
        pieces, step = phase.receive(req)
        if isinstance(step, WaitFor):  # the final response waits for reinstated()
            return phase, step, ini
        resp = responses(pieces)
        if isinstance(step, Refused):
            return phase, step, ini
        req = ini.receive(resp)
    return phase, step, ini


def test_a_login_starts_a_session_on_its_target_with_the_login_window() -> None:
    p = portal()
    phase, step, ini = log_in(p, PRIVATE)
    assert step is START and ini.done
    # Login is immediate: the first command reuses the login's CmdSN; the window is
    # the one slot the connection brought.
    assert (ini.exp_cmd_sn, ini.max_cmd_sn, ini.exp_stat_sn) == (77, 77, 1)
    s = phase.session([], name="conn-1", now=0.0)
    assert s.luns == [3] and s.exp_cmd_sn == 77 and s.stat_sn == 1
    assert (s.nexus.initiator, s.nexus.isid) == (HOST, ISID)
    assert phase.what == f"Normal session for {HOST} with {PRIVATE}"


def test_every_login_response_takes_one_statsn() -> None:
    entry = TargetEntry(DISK, chap=("alice", "alice-secret-12"))
    p = TargetPortal([TargetSpec(entry, {0: unit()})], arena=Arena(16 << 20, levels=TargetLevel),
                     config=SessionConfig(policy=AdmissionPolicy.NONE), recv_bytes=RECV)
    phase, step, ini = log_in(p, DISK, chap=("alice", "alice-secret-12"))
    assert step is START and ini.exp_stat_sn == 4  # CHAP: four exchanges
    assert ini.max_cmd_sn == 77 + p.config.window - 1
    assert phase.session([], name="c", now=0.0).stat_sn == 4


def test_the_second_login_of_a_nexus_waits_through_the_login_phase() -> None:
    p = portal()
    _, step, _ = log_in(p, DISK)
    assert step is START
    _, step, _ = log_in(p, DISK)
    assert step == WaitFor(1)


def test_a_reinstating_login_is_answered_only_once_the_old_session_drained() -> None:
    p = portal()
    first, step, _ = log_in(p, DISK)
    assert step is START
    _, shares_changed = first.start([], name="conn-1", now=0.0)
    assert shares_changed  # a session more: every share is recomputed
    second = LoginPhase(p, p.connection_opened())
    ini = InitiatorLogin(HOST, target_name=DISK, isid=ISID, cmd_sn=77)
    req: LoginRequest | None = ini.start()
    while req is not None:
        pieces, step = second.receive(req)
        if step is not None:
            break
        req = ini.receive(responses(pieces))
    assert step == WaitFor(1) and pieces == []  # nothing sent: the initiator waits
    assert p.drained(1) == [2]
    resp = responses(second.reinstated())
    assert resp.transit and ini.receive(resp) is None and ini.done
    assert second.reinstated() == []  # given back once
    session, _ = second.start([], name="conn-2", now=0.0)
    assert session.stat_sn == 1 and session.exp_cmd_sn == 77
    assert session.slot_target == p.fair_share()  # the portal shares slots with it too


@pytest.mark.parametrize(("target", "initiator", "status"), [
    (PRIVATE, OTHER, LoginStatus.AUTHORIZATION_FAILURE),
    ("iqn.2026-11.org.earmark:nowhere", HOST, LoginStatus.NOT_FOUND),
])
def test_the_acl_and_unknown_targets_refuse_the_login(target: str, initiator: str,
                                                      status: LoginStatus) -> None:
    p = portal()
    conn_id = p.connection_opened()
    phase = LoginPhase(p, conn_id)
    req = InitiatorLogin(initiator, target_name=target, isid=ISID).start()
    pieces, step = phase.receive(req)
    resp = responses(pieces)
    assert isinstance(step, Refused) and step.reason
    assert (resp.status_class << 8 | resp.status_detail) == status


def test_one_initiator_may_hold_only_so_many_sessions_but_may_always_reinstate() -> None:
    p = TargetPortal([TargetSpec(TargetEntry(DISK), {0: unit()})],
                     arena=Arena(64 << 20, levels=TargetLevel), config=SessionConfig(),
                     limits=PortalLimits(sessions_per_initiator=2))
    assert log_in(p, DISK, isid=ISID)[1] is START
    assert log_in(p, DISK, isid=ISID + 1)[1] is START
    phase = LoginPhase(p, p.connection_opened())
    pieces, step = phase.receive(InitiatorLogin(HOST, target_name=DISK, isid=ISID + 2).start())
    resp = responses(pieces)
    assert isinstance(step, Refused) and "as many sessions as it may" in step.reason
    assert (resp.status_class << 8 | resp.status_detail) == LoginStatus.OUT_OF_RESOURCES
    assert isinstance(log_in(p, DISK, isid=ISID)[1], WaitFor)  # a reinstatement: allowed
    assert log_in(p, DISK, initiator=OTHER, isid=ISID + 2)[1] is START  # someone else
    assert p.drained(2) == []  # ISID + 1's session is over: room for another
    assert log_in(p, DISK, isid=ISID + 2)[1] is START


def test_discovery_shows_only_the_targets_an_initiator_may_log_in_to() -> None:
    p = portal()
    p.listening("127.0.0.1", 3260)
    _, step, _ = log_in(p, None, initiator=OTHER)
    assert step is START  # a discovery session has no nexus to reinstate
    seen = parse_send_targets(p.text_answer(OTHER, None)([("SendTargets", "All")]))
    assert [t.name for t in seen] == [DISK]
    seen = parse_send_targets(p.text_answer(HOST, None)([("SendTargets", "All")]))
    assert sorted(t.name for t in seen) == [DISK, PRIVATE]
    assert p.units_of(PRIVATE).keys() == {3} and p.units_of("iqn.2026-11.x:none") == {}


def test_anything_but_a_login_request_before_login_is_a_protocol_error() -> None:
    p = portal()
    phase = LoginPhase(p, p.connection_opened())
    with pytest.raises(ProtocolError, match="NopOut before login completed"):
        phase.receive(NopOut(itt=1, cmd_sn=1, exp_stat_sn=0))
