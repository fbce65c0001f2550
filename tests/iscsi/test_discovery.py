"""SendTargets text and the continued Text Request/Response exchange."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from earmark.iscsi.discovery import (
    DiscoveredTarget,
    Portal,
    TextRequester,
    TextResponder,
    discovery_answer,
    format_target_address,
    parse_send_targets,
    parse_target_address,
    send_targets_from_pairs,
    send_targets_response,
)
from earmark.iscsi.errors import ProtocolError
from earmark.iscsi.login import InitiatorLogin, TargetEntry, TargetLogin
from earmark.iscsi.pdu import RESERVED_TAG, TextRequest, TextResponse
from earmark.iscsi.text import decode_text, encode_text

ME = "iqn.2024-01.earmark:host"
A = TargetEntry("iqn.2024-01.earmark:a")
B = TargetEntry("iqn.2024-01.earmark:b", allowed_initiators=frozenset({ME}))
HIDDEN = TargetEntry("iqn.2024-01.earmark:hidden",
                     allowed_initiators=frozenset({"iqn.2024-01.earmark:other"}))
TARGETS = {t.iqn: t for t in (A, B, HIDDEN)}
PORTALS = [Portal("127.0.0.1", 3260, 1), Portal("::1", 3261, 2)]


def test_send_targets_all_respects_acls() -> None:
    data = send_targets_response(TARGETS, PORTALS, "All", initiator_name=ME)
    assert decode_text(data) == [
        ("TargetName", A.iqn), ("TargetAddress", "127.0.0.1:3260,1"),
        ("TargetAddress", "[::1]:3261,2"),
        ("TargetName", B.iqn), ("TargetAddress", "127.0.0.1:3260,1"),
        ("TargetAddress", "[::1]:3261,2"),
    ]
    assert parse_send_targets(data) == [
        DiscoveredTarget(A.iqn, ("127.0.0.1:3260,1", "[::1]:3261,2")),
        DiscoveredTarget(B.iqn, ("127.0.0.1:3260,1", "[::1]:3261,2")),
    ]
    other = send_targets_response(TARGETS, PORTALS, "All",
                                  initiator_name="iqn.2024-01.earmark:other")
    assert [t.name for t in parse_send_targets(other)] == [A.iqn, HIDDEN.iqn]


def test_send_targets_by_name_and_empty() -> None:
    one = send_targets_response(TARGETS.values(), PORTALS[:1], B.iqn, initiator_name=ME)
    assert one == b"TargetName=iqn.2024-01.earmark:b\0TargetAddress=127.0.0.1:3260,1\0"
    # A target the initiator may not see is answered like one that does not exist.
    assert send_targets_response(TARGETS, PORTALS, HIDDEN.iqn, initiator_name=ME) == b""
    assert send_targets_response(TARGETS, PORTALS, "iqn.x:none", initiator_name=ME) == b""
    assert send_targets_response(TARGETS, PORTALS, "", initiator_name=ME) == b""
    session = send_targets_response(TARGETS, PORTALS[:1], "", initiator_name=ME,
                                    session_target=A.iqn)
    assert parse_send_targets(session) == [DiscoveredTarget(A.iqn, ("127.0.0.1:3260,1",))]


def test_parse_send_targets_errors_and_tolerance() -> None:
    with pytest.raises(ProtocolError, match="before any TargetName"):
        parse_send_targets(b"TargetAddress=1.2.3.4:3260,1\0")
    with pytest.raises(ProtocolError):
        parse_send_targets(b"TargetName=x")
    assert parse_send_targets(b"TargetName=x\0TargetAlias=y\0") == [DiscoveredTarget("x", ())]


def test_target_address_parsing() -> None:
    assert parse_target_address("10.0.0.1:3261,4") == Portal("10.0.0.1", 3261, 4)
    assert parse_target_address("[fe80::1]:3262,9") == Portal("fe80::1", 3262, 9)
    assert parse_target_address("host.example") == Portal("host.example", 3260, 1)
    assert parse_target_address("[::1]") == Portal("::1", 3260, 1)
    for bad in ("[::1", "h:70000,1", "h:x,1", ":3260,1", "h:1,-3", "[::1]x"):
        with pytest.raises(ProtocolError):
            parse_target_address(bad)


HOSTS = st.one_of(
    st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
    st.ip_addresses().map(str),
)


@given(HOSTS, st.integers(1, 65535), st.integers(0, 65535))
def test_target_address_round_trip(host: str, port: int, tpgt: int) -> None:
    portal = Portal(host, port, tpgt)
    assert parse_target_address(format_target_address(portal)) == portal


def exchange(
    responder: TextResponder, requester: TextRequester
) -> list[TextResponse]:
    responses = []
    req: TextRequest | None = requester.start(cmd_sn=10, exp_stat_sn=20)
    stat_sn = 20
    while req is not None:
        resp = responder.receive(req, stat_sn=stat_sn, exp_cmd_sn=10, max_cmd_sn=20)
        assert resp.stat_sn == stat_sn
        stat_sn += 1
        responses.append(resp)
        req = requester.receive(resp, cmd_sn=10, exp_stat_sn=stat_sn)
    return responses


def test_small_answer_is_one_final_pdu_as_libiscsi_needs() -> None:
    responder = TextResponder(discovery_answer(TARGETS, PORTALS, initiator_name=ME),
                              max_segment=262144)
    requester = TextRequester([("SendTargets", "All")], itt=3)
    (resp,) = exchange(responder, requester)
    # libiscsi 1.19 accepts only flags == F.
    assert resp.final and not resp.continue_ and resp.ttt == RESERVED_TAG and resp.itt == 3
    assert [t.name for t in parse_send_targets(resp.data)] == [A.iqn, B.iqn]


@given(st.integers(1, 120), st.integers(0, 40))
def test_long_answer_is_continued(max_segment: int, extra: int) -> None:
    targets = {f"iqn.2024-01.earmark:t{i}": TargetEntry(f"iqn.2024-01.earmark:t{i}")
               for i in range(extra)}
    answer = discovery_answer(targets, PORTALS, initiator_name=ME)
    expected = answer([("SendTargets", "All")])
    responder = TextResponder(answer, max_segment=max_segment)
    requester = TextRequester([("SendTargets", "All")], itt=3)
    responses = exchange(responder, requester)
    assert len(responses) == max(1, -(-len(expected) // max_segment))
    for resp in responses[:-1]:
        assert not resp.final and resp.continue_ and resp.ttt not in (0, RESERVED_TAG)
        assert len(resp.data) == max_segment
    assert len({r.ttt for r in responses[:-1]}) <= 1
    assert responses[-1].final and responses[-1].ttt == RESERVED_TAG
    assert requester.done and requester.pairs == decode_text(expected)


def test_unknown_keys_and_continued_request() -> None:
    responder = TextResponder(discovery_answer(TARGETS, PORTALS[:1], initiator_name=ME),
                              max_segment=8192)
    text = encode_text([("X-org.example.ping", "1"), ("SendTargets", B.iqn)])
    first = responder.receive(TextRequest(itt=7, final=False, continue_=True, data=text[:9]),
                              stat_sn=1, exp_cmd_sn=1, max_cmd_sn=1)
    assert first.data == b"" and not first.final and first.ttt != RESERVED_TAG
    last = responder.receive(TextRequest(itt=7, ttt=first.ttt, data=text[9:]),
                             stat_sn=2, exp_cmd_sn=1, max_cmd_sn=1)
    assert last.final and decode_text(last.data) == [
        ("X-org.example.ping", "NotUnderstood"), ("TargetName", B.iqn),
        ("TargetAddress", "127.0.0.1:3260,1"),
    ]


def test_exchange_rule_violations() -> None:
    responder = TextResponder(lambda pairs: b"A=" + b"x" * 100 + b"\0", max_segment=10)
    with pytest.raises(ProtocolError, match="did not issue"):
        responder.receive(TextRequest(itt=1, ttt=5), stat_sn=0, exp_cmd_sn=0, max_cmd_sn=0)
    with pytest.raises(ProtocolError, match="both F and C"):
        responder.receive(TextRequest(itt=1, continue_=True), stat_sn=0, exp_cmd_sn=0,
                          max_cmd_sn=0)
    first = responder.receive(TextRequest(itt=1, data=b"K=v\0"), stat_sn=0, exp_cmd_sn=0,
                              max_cmd_sn=0)
    assert first.continue_
    with pytest.raises(ProtocolError, match="while our response continues"):
        responder.receive(TextRequest(itt=1, ttt=first.ttt, data=b"K=v\0"), stat_sn=0,
                          exp_cmd_sn=0, max_cmd_sn=0)
    # A new request (reserved TTT) abandons the unfinished answer.
    again = responder.receive(TextRequest(itt=2, data=b"K=v\0"), stat_sn=0, exp_cmd_sn=0,
                              max_cmd_sn=0)
    assert again.itt == 2 and again.data == b"A=xxxxxxxx"

    requester = TextRequester([("SendTargets", "All")], itt=1)
    for bad, match in [
        (TextResponse(itt=2), "expected"),
        (TextResponse(itt=1, final=True, ttt=4), "final Text Response"),
        (TextResponse(itt=1, final=False), "without a TTT"),
    ]:
        with pytest.raises(ProtocolError, match=match):
            requester.receive(bad, cmd_sn=0, exp_stat_sn=0)
    assert requester.receive(TextResponse(itt=1, data=b"K=v\0"), cmd_sn=0, exp_stat_sn=0) is None
    with pytest.raises(ProtocolError, match="after the exchange ended"):
        requester.receive(TextResponse(itt=1), cmd_sn=0, exp_stat_sn=0)


def test_discovery_session_end_to_end() -> None:
    """Discovery login, then SendTargets=All, through both sans-I/O sides."""
    ini = InitiatorLogin(ME, target_name=None, isid=1)
    tgt = TargetLogin(TARGETS, portal_group_tag=1)
    req = ini.start()
    resp = tgt.receive(req, exp_cmd_sn=req.cmd_sn, max_cmd_sn=req.cmd_sn, stat_sn=1)
    assert ini.receive(resp) is None and tgt.done and tgt.session_type == "Discovery"
    assert tgt.initiator_name is not None
    responder = TextResponder(
        discovery_answer(TARGETS, PORTALS, initiator_name=tgt.initiator_name),
        max_segment=tgt.params.initiator_mrdsl,
    )
    requester = TextRequester([("SendTargets", "All")], itt=ini.itt + 1)
    exchange(responder, requester)
    found = send_targets_from_pairs(requester.pairs)
    assert [t.name for t in found] == [A.iqn, B.iqn]
    assert parse_target_address(found[1].addresses[1]) == PORTALS[1]
