"""Fuzz harness: text keys (`earmark.iscsi.text`) and their negotiation
(`earmark.iscsi.negotiation`), both roles.

An input is one of: text bytes, cut into drawn C=1 pieces for a ``TextAccumulator``
and then negotiated by a drawn role; drawn pairs (known keys, unknown ones, valid and
invalid values) negotiated by a drawn role; or an initiator and a target with drawn
(valid) wants negotiating with each other, as a login does.

A crash is any exception other than ProtocolError and its kin (NegotiationError): the
login turns those into a refusal. And these broken invariants: the pieces decode
otherwise than the whole text; decoded text does not survive encode and decode; our
answers cannot be encoded; ``params`` raises after a negotiation that did not, or
gives a MaxRecvDataSegmentLength or burst outside RFC 7143's ranges; two of our
negotiators end a negotiation with different parameters or with an offer unanswered.
"""

from __future__ import annotations

from earmark.iscsi.errors import ProtocolError
from earmark.iscsi.negotiation import KEYS, KeyDef, Kind, Negotiator, Role, SessionParams
from earmark.iscsi.text import TextAccumulator, TextPairs, decode_text, encode_text
from tests.fuzz.draw import Draw

_NAMES = sorted(KEYS)
_OTHER_KEYS = ("IFMarkInt", "OFMarkInt", "X-com.example.key", "CHAP_A", "TaskReporting",
               "a.-+@_9", "x" * 63)
_ODD_VALUES = ("", "NotUnderstood", "Irrelevant", "Reject", "0x", "0x1F", "4294967296",
               "-1", "Yes,No", "None,CRC32C,", "\u0663")
_MAX24 = (1 << 24) - 1


def _valid_value(draw: Draw, kd: KeyDef) -> str:
    if kd.kind is Kind.LIST:
        chosen = [c for c in kd.choices if draw.flag()] or [kd.choices[0]]
        return ",".join(chosen)
    if kd.choices:
        return draw.pick(kd.choices)
    if kd.numeric:
        n = kd.lo + draw.uint(4) % (kd.hi - kd.lo + 1)
        return hex(n) if draw.flag() else str(n)
    return "iqn.2024-01.earmark:" + draw.blob(16).hex()


def _value(draw: Draw, kd: KeyDef | None) -> str:
    choice = draw.below(3)
    if choice == 0 and kd is not None:
        return _valid_value(draw, kd)
    if choice == 1:
        return draw.pick(_ODD_VALUES)
    return draw.blob(300).decode("utf-8", "replace")


def peer_pairs(draw: Draw) -> TextPairs:
    """Pairs a peer can send: those text encodes (decoding takes nothing else)."""
    pairs: TextPairs = []
    for _ in range(draw.below(24)):
        key = draw.pick(_NAMES) if draw.uint(1) < 224 else draw.pick(_OTHER_KEYS)
        pair = (key, _value(draw, KEYS.get(key)))
        try:
            encode_text([pair])
        except ValueError:
            continue
        pairs.append(pair)
    return pairs


def _wants(draw: Draw, role: Role) -> dict[str, str]:
    return {name: _valid_value(draw, kd) for name, kd in KEYS.items()
            if kd.sender in (None, role) and draw.flag()}


def _check_params(params: SessionParams) -> None:
    for mrdsl in (params.initiator_mrdsl, params.target_mrdsl):
        assert 512 <= mrdsl <= _MAX24, params
    assert 512 <= params.first_burst_length <= params.max_burst_length <= _MAX24, params


def _negotiate(draw: Draw, pairs: TextPairs) -> None:
    role = draw.pick((Role.INITIATOR, Role.TARGET))
    wants = _wants(draw, role)
    negotiator = Negotiator(role, wants, leading=draw.uint(1) < 200,
                            irrelevant=[k for k in wants if draw.uint(1) < 32])
    if draw.flag():
        negotiator.offers()
    try:
        answers = negotiator.receive(pairs)
    except ProtocolError:
        return
    decode_text(encode_text(answers))
    _check_params(negotiator.params())


def _text(draw: Draw) -> None:
    cuts = [draw.uint(2) for _ in range(draw.below(4))]
    raw = draw.blob(2048)
    try:
        whole: TextPairs | None = decode_text(raw)
    except ProtocolError:
        whole = None
    acc = TextAccumulator(limit=draw.pick((64, 1024, 65536)))
    got: TextPairs | None = None
    try:
        at = 0
        for cut in [*sorted({c for c in cuts if 0 < c < len(raw)}), len(raw)]:
            got = acc.add(raw[at:cut], cut < len(raw))
            at = cut
    except ProtocolError:
        return
    assert got == whole, (got, whole)
    assert whole is not None
    assert decode_text(encode_text(whole)) == whole
    _negotiate(draw, whole)


def _both(draw: Draw) -> None:
    ini = Negotiator(Role.INITIATOR, _wants(draw, Role.INITIATOR))
    tgt = Negotiator(Role.TARGET, _wants(draw, Role.TARGET))
    answers = tgt.receive(ini.offers()) + tgt.offers()
    tgt.receive(ini.receive(answers))
    assert not ini.awaiting_answers and not tgt.awaiting_answers
    assert ini.params() == tgt.params()
    _check_params(ini.params())


def one_input(data: bytes) -> None:
    draw = Draw(data)
    mode = draw.below(3)
    if mode == 0:
        _text(draw)
    elif mode == 1:
        _negotiate(draw, peer_pairs(draw))
    else:
        _both(draw)
