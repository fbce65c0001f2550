"""Fuzz harness: login, None and CHAP (one-way and mutual), both roles, through the
code the runtimes use: the initiator's `LoginSteps` (over `InitiatorLogin` and its
`ChapResponder`) against the target's `LoginPhase` (over `TargetLogin`, its
`ChapAuthenticator` and the `TargetPortal`).

An input draws the target asked for (open, CHAP, mutual CHAP, an ACL, discovery, an
unknown one), the initiator's credentials (right, wrong, none) and its wants; then,
for every PDU either side sends, whether it goes as sent or is changed on the way:
its text replaced by drawn pairs (valid and invalid keys and values), its data by
drawn bytes, or header bytes flipped. Every PDU crosses as bytes through the framer.

A crash is any exception other than the documented ends of a login: a ProtocolError
from the framer or `LoginPhase` (the target Rejects or closes), an InitiatorError
from `LoginSteps` (the initiator closes), a `Refused` step (the target sends the
refusal and closes). And these broken invariants: a target answer that does not
frame; a side that finishes with the other refusing; an unchanged login ending
with the two sides' parameters different or without both sides done; a finished
login without a TSIH, or whose session cannot be built.
"""

from __future__ import annotations

from earmark.initiator.errors import InitiatorError
from earmark.initiator.login import LoginSteps
from earmark.initiator.session import Timeouts
from earmark.iscsi.errors import ProtocolError
from earmark.iscsi.framing import serialize
from earmark.iscsi.login import LOGIN_MAX_SEGMENT, InitiatorLogin, TargetEntry
from earmark.iscsi.pdu import LoginRequest, LoginResponse, Pdu
from earmark.iscsi.stream import receive_buffer_bytes
from earmark.iscsi.text import encode_text
from earmark.memory import Arena
from earmark.memory.levels import TargetLevel
from earmark.target.login_phase import LoginPhase, Refused
from earmark.target.portal import TargetPortal, TargetSpec
from earmark.target.session import SessionConfig
from tests.fuzz.draw import Draw
from tests.fuzz.harness_text import peer_pairs
from tests.wire_reader import WireReader

INITIATOR = "iqn.2024-01.earmark:host"
_ALICE = ("alice", "alice-secret-12")
_TGT = ("tgt", "target-secret-34")
_ENTRIES = (
    TargetEntry("iqn.2024-01.earmark:disk", alias="disk one"),
    TargetEntry("iqn.2024-01.earmark:secure", chap=_ALICE),
    TargetEntry("iqn.2024-01.earmark:mutual", chap=_ALICE, mutual=_TGT),
    TargetEntry("iqn.2024-01.earmark:private",
                allowed_initiators=frozenset({"iqn.2024-01.earmark:other"})),
)
_NAMES = (*(e.iqn for e in _ENTRIES), None, "iqn.2024-01.earmark:nowhere")
_CHAP = (None, _ALICE, ("alice", "wrong-secret-99"), ("bob", "alice-secret-12"))
_MUTUAL = (None, _TGT, ("tgt", "wrong-secret-99"))
_CONFIG = SessionConfig(buffer_bytes=64 * 1024)
_RECV = receive_buffer_bytes(65536, 1)


def _portal() -> TargetPortal:
    arena = Arena(4 * _RECV, levels=TargetLevel)
    return TargetPortal([TargetSpec(e, {}) for e in _ENTRIES], arena=arena, config=_CONFIG,
                        recv_bytes=_RECV)


class _Counter:
    """Deterministic CHAP challenges and identifiers: a replay is the same run."""

    def __init__(self, start: int) -> None:
        self.n = start

    def __call__(self, n: int) -> bytes:
        self.n += 1
        return bytes((self.n * 7 + i) & 0xFF for i in range(n))


def _on_the_way(draw: Draw, pdu: Pdu) -> tuple[bytes, bool]:
    """The bytes that arrive for `pdu`, and whether they are what was sent."""
    what = draw.uint(1)
    if what < 160:
        return b"".join(bytes(p) for p in serialize(pdu, False, False)), False
    if what < 208:
        pdu.data = encode_text(peer_pairs(draw))  # type: ignore[union-attr]
    elif what < 224:
        pdu.data = draw.blob(LOGIN_MAX_SEGMENT + 16)  # type: ignore[union-attr]
    wire = bytearray(b"".join(bytes(p) for p in serialize(pdu, False, False)))
    if what >= 224 or draw.flag():
        for _ in range(1 + draw.below(4)):
            wire[draw.below(48)] ^= 1 + draw.below(255)
    return bytes(wire), True


def one_input(data: bytes) -> None:
    draw = Draw(data)
    target_name = draw.pick(_NAMES)
    chap = draw.pick(_CHAP)
    mutual = draw.pick(_MUTUAL) if chap is not None else None
    wants = {"HeaderDigest": draw.pick(("None", "CRC32C", "CRC32C,None")),
             "DataDigest": draw.pick(("None", "CRC32C,None")),
             "MaxRecvDataSegmentLength": str(draw.pick((512, 8192, 262144)))}
    login = InitiatorLogin(INITIATOR if draw.uint(1) < 240 else "iqn.2024-01.earmark:other",
                           target_name=target_name, isid=0x80_1234_5678_9A + draw.below(3),
                           chap=chap, mutual=mutual, wants=wants, cmd_sn=draw.uint(4),
                           itt=draw.uint(4), random=_Counter(draw.uint(1)))
    steps = LoginSteps(login, "fuzz")
    portal = _portal()
    conn = portal.connection_opened()
    phase = LoginPhase(portal, conn)
    to_target = WireReader(LOGIN_MAX_SEGMENT)
    to_initiator = WireReader(LOGIN_MAX_SEGMENT)
    changed = False
    req: LoginRequest | None = steps.start()
    while req is not None:
        wire, edited = _on_the_way(draw, req)
        changed |= edited
        try:
            pdus = to_target.feed(wire)
        except ProtocolError:
            return  # the target Rejects a PDU that does not frame, or closes
        if not pdus:
            return  # the target waits for the rest; the login timeout closes it
        (pdu,) = pdus
        try:
            pieces, step = phase.receive(pdu)
        except ProtocolError:
            return
        (resp,) = WireReader(LOGIN_MAX_SEGMENT).feed(b"".join(bytes(p) for p in pieces))
        assert isinstance(resp, LoginResponse)
        wire, edited = _on_the_way(draw, resp)
        changed |= edited
        try:
            answers = to_initiator.feed(wire)
        except ProtocolError:
            return
        if not answers:
            return
        try:
            req = steps.receive(answers[0])
        except InitiatorError:
            return
        if isinstance(step, Refused):
            assert changed, f"the initiator took a refusal for an answer: {step}"
            return
        if step is not None:
            _started(phase, steps, changed)
            return
        assert not steps.done or changed, "the initiator is done, the target is not"


def _started(phase: LoginPhase, steps: LoginSteps, changed: bool) -> None:
    """The target ended the login: its session and, if done too, the initiator's."""
    session = phase.session([], name="fuzz", now=0.0)
    if not steps.done:
        assert changed, "the target started a session the initiator did not finish"
        return
    steps.session(0.0, Timeouts())
    assert steps.login.tsih != 0
    if not changed:
        assert session.params == steps.login.params, (session.params, steps.login.params)
