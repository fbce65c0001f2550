"""Operational key negotiation: result functions, answers, libiscsi's login keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from earmark.iscsi.errors import NegotiationError
from earmark.iscsi.negotiation import Negotiator, Role, SessionParams

# What libiscsi 1.19 sends in its single LoginOperationalNegotiation PDU
# (lib/login.c, iscsi_login_async), in that order.
LIBISCSI_OPNEG = [
    ("InitiatorName", "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"),
    ("TargetName", "iqn.2024-01.earmark:disk"),
    ("SessionType", "Normal"),
    ("HeaderDigest", "None,CRC32C"),
    ("DataDigest", "None"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
    ("MaxBurstLength", "262144"),
    ("FirstBurstLength", "262144"),
    ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"),
    ("MaxOutstandingR2T", "1"),
    ("ErrorRecoveryLevel", "0"),
    ("IFMarker", "No"),
    ("OFMarker", "No"),
    ("MaxConnections", "1"),
    ("MaxRecvDataSegmentLength", "262144"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
]

TARGET_WANTS = {
    "HeaderDigest": "CRC32C,None",
    "DataDigest": "CRC32C,None",
    "InitialR2T": "Yes",
    "ImmediateData": "Yes",
    "MaxBurstLength": "1048576",
    "FirstBurstLength": "65536",
    "MaxRecvDataSegmentLength": "65536",
    "ErrorRecoveryLevel": "0",
    "MaxOutstandingR2T": "4",
    "TargetPortalGroupTag": "1",
    "TargetAlias": "earmark",
}


def test_target_answers_libiscsi() -> None:
    target = Negotiator(Role.TARGET, TARGET_WANTS)
    answers = dict(target.receive(LIBISCSI_OPNEG))
    assert answers == {
        "HeaderDigest": "None",  # first of the offer we accept, not our preference
        "DataDigest": "None",
        "InitialR2T": "Yes",  # OR
        "ImmediateData": "Yes",  # AND
        "MaxBurstLength": "262144",  # min
        "FirstBurstLength": "65536",
        "DefaultTime2Wait": "2",  # max(2, default 2)
        "DefaultTime2Retain": "0",
        "MaxOutstandingR2T": "1",
        "ErrorRecoveryLevel": "0",
        "IFMarker": "No",
        "OFMarker": "No",
        "MaxConnections": "1",
        "DataPDUInOrder": "Yes",
        "DataSequenceInOrder": "Yes",
    }
    declared = dict(target.offers())
    assert declared == {
        "MaxRecvDataSegmentLength": "65536", "TargetPortalGroupTag": "1",
        "TargetAlias": "earmark",
    }
    p = target.params()
    assert p.initiator_mrdsl == 262144 and p.target_mrdsl == 65536
    assert p.initial_r2t and p.immediate_data and not p.header_digest
    assert p.first_burst_length == 65536 and p.max_burst_length == 262144
    assert p.initiator_name == "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"
    assert p.target_name == "iqn.2024-01.earmark:disk"
    assert p.target_portal_group_tag == 1 and p.session_type == "Normal"


def test_target_enforces_erl0_and_answers_unknown_keys() -> None:
    target = Negotiator(Role.TARGET, {"ErrorRecoveryLevel": "0"})
    answers = target.receive(
        [("ErrorRecoveryLevel", "2"), ("X-com.example.Foo", "1"), ("IFMarkInt", "2048~8192"),
         ("MaxBurstLength", "100"), ("HeaderDigest", "MD5")]
    )
    assert answers == [
        ("ErrorRecoveryLevel", "0"), ("X-com.example.Foo", "NotUnderstood"),
        ("IFMarkInt", "Irrelevant"), ("MaxBurstLength", "Reject"), ("HeaderDigest", "Reject"),
    ]
    p = target.params()
    assert p.error_recovery_level == 0 and p.max_burst_length == 262144


def test_rule_violations() -> None:
    target = Negotiator(Role.TARGET, {})
    target.receive([("MaxBurstLength", "4096")])
    with pytest.raises(NegotiationError, match="MaxBurstLength negotiated more than once"):
        target.receive([("MaxBurstLength", "4096")])
    with pytest.raises(NegotiationError, match="TargetAlias may only be sent by the target"):
        target.receive([("TargetAlias", "x")])
    with pytest.raises(NegotiationError, match="declaration MaxRecvDataSegmentLength=12"):
        target.receive([("MaxRecvDataSegmentLength", "12")])
    nonleading = Negotiator(Role.TARGET, {}, leading=False)
    assert nonleading.receive([("MaxBurstLength", "4096")]) == [("MaxBurstLength", "Irrelevant")]


def test_initiator_rejects_answers_that_break_the_result_function() -> None:
    ini = Negotiator(Role.INITIATOR, {"MaxBurstLength": "65536", "ImmediateData": "No",
                                      "HeaderDigest": "None"})
    assert ini.offers() == [("MaxBurstLength", "65536"), ("ImmediateData", "No"),
                            ("HeaderDigest", "None")]
    assert ini.awaiting_answers
    with pytest.raises(NegotiationError, match="breaks the numerical minimum"):
        ini.receive([("MaxBurstLength", "131072")])
    with pytest.raises(NegotiationError, match="breaks the boolean AND"):
        ini.receive([("ImmediateData", "Yes")])
    with pytest.raises(NegotiationError, match="breaks the list"):
        ini.receive([("HeaderDigest", "CRC32C")])


def test_initiator_answers_target_offers_and_takes_reject_as_default() -> None:
    ini = Negotiator(Role.INITIATOR, {"MaxBurstLength": "65536", "DataDigest": "CRC32C,None"})
    ini.offers()
    answers = ini.receive([("MaxBurstLength", "Reject"), ("DataDigest", "CRC32C"),
                           ("MaxOutstandingR2T", "8"), ("TargetPortalGroupTag", "3")])
    assert answers == [("MaxOutstandingR2T", "1")]
    assert not ini.awaiting_answers
    p = ini.params()
    assert p.max_burst_length == 262144 and p.data_digest and p.max_outstanding_r2t == 1
    assert p.target_portal_group_tag == 3


NUMBERS = st.integers(512, 1 << 20).map(str)
WANTS = st.fixed_dictionaries({
    "HeaderDigest": st.sampled_from(["None", "CRC32C", "None,CRC32C", "CRC32C,None"]),
    "DataDigest": st.sampled_from(["None", "CRC32C", "None,CRC32C", "CRC32C,None"]),
    "InitialR2T": st.sampled_from(["Yes", "No"]),
    "ImmediateData": st.sampled_from(["Yes", "No"]),
    "MaxBurstLength": NUMBERS,
    "FirstBurstLength": NUMBERS,
    "MaxRecvDataSegmentLength": NUMBERS,
    "DefaultTime2Wait": st.integers(0, 3600).map(str),
    "ErrorRecoveryLevel": st.integers(0, 2).map(str),
})


@given(WANTS, WANTS)
def test_both_sides_agree(iw: dict[str, str], tw: dict[str, str]) -> None:
    ini = Negotiator(Role.INITIATOR, iw)
    tgt = Negotiator(Role.TARGET, tw)
    answers = tgt.receive(ini.offers()) + tgt.offers()
    assert ini.receive(answers) == []
    assert not ini.awaiting_answers
    a, b = ini.params(), tgt.params()
    assert a == b
    assert isinstance(a, SessionParams)
    assert a.max_burst_length == min(int(iw["MaxBurstLength"]), int(tw["MaxBurstLength"]))
    assert a.error_recovery_level == min(int(iw["ErrorRecoveryLevel"]),
                                         int(tw["ErrorRecoveryLevel"]))
    assert a.initial_r2t == (iw["InitialR2T"] == "Yes" or tw["InitialR2T"] == "Yes")
    assert a.first_burst_length <= a.max_burst_length
    assert a.initiator_mrdsl == int(iw["MaxRecvDataSegmentLength"])
    assert a.target_mrdsl == int(tw["MaxRecvDataSegmentLength"])
    both = [v for v in iw["HeaderDigest"].split(",") if v in tw["HeaderDigest"].split(",")]
    assert a.header_digest == (both[:1] == ["CRC32C"])
