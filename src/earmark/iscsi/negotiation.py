"""Login key negotiation (RFC 7143 §6.2, §13).

Both sides use one :class:`Negotiator`: whatever arrives is either an answer
to a key we offered or an offer/declaration from the peer, which we answer
with the key's result function. Keeping the two roles in one object keeps
the rules (ranges, result functions, no key negotiated twice) in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from .errors import NegotiationError
from .text import TextPairs

NOT_UNDERSTOOD = "NotUnderstood"
IRRELEVANT = "Irrelevant"
REJECT = "Reject"
_SPECIAL_ANSWERS = frozenset({NOT_UNDERSTOOD, IRRELEVANT, REJECT})


class Role(Enum):
    INITIATOR = "initiator"
    TARGET = "target"


class Kind(Enum):
    """Result function of a key (RFC 7143 §6.2.2 and the key's §13 entry)."""

    LIST = "list"
    MIN = "numerical minimum"
    MAX = "numerical maximum"
    AND = "boolean AND"
    OR = "boolean OR"
    DECLARATIVE = "declarative"


@dataclass(frozen=True, slots=True)
class KeyDef:
    name: str
    kind: Kind
    default: str
    lo: int = 0
    hi: int = 0
    choices: tuple[str, ...] = ()
    leading_only: bool = False
    sender: Role | None = None
    """Only this role may send the key; None means either."""
    numeric: bool = False


def _num(name: str, kind: Kind, default: int, lo: int, hi: int, lo_only: bool = True) -> KeyDef:
    return KeyDef(name, kind, str(default), lo, hi, leading_only=lo_only, numeric=True)


def _bool(name: str, kind: Kind, default: str) -> KeyDef:
    return KeyDef(name, kind, default, choices=("Yes", "No"), leading_only=True)


_I, _T = Role.INITIATOR, Role.TARGET
_MAX24 = (1 << 24) - 1

KEYS: dict[str, KeyDef] = {
    k.name: k
    for k in (
        KeyDef("AuthMethod", Kind.LIST, "None", choices=("CHAP", "None", "KRB5", "SRP", "SPKM1",
                                                         "SPKM2")),
        KeyDef("HeaderDigest", Kind.LIST, "None", choices=("CRC32C", "None")),
        KeyDef("DataDigest", Kind.LIST, "None", choices=("CRC32C", "None")),
        _num("MaxConnections", Kind.MIN, 1, 1, 65535),
        KeyDef("TargetName", Kind.DECLARATIVE, "", sender=_I),
        KeyDef("InitiatorName", Kind.DECLARATIVE, "", sender=_I),
        KeyDef("TargetAlias", Kind.DECLARATIVE, "", sender=_T),
        KeyDef("InitiatorAlias", Kind.DECLARATIVE, "", sender=_I),
        KeyDef("TargetAddress", Kind.DECLARATIVE, "", sender=_T),
        KeyDef("TargetPortalGroupTag", Kind.DECLARATIVE, "", lo=0, hi=65535, sender=_T,
               numeric=True),
        _bool("InitialR2T", Kind.OR, "Yes"),
        _bool("ImmediateData", Kind.AND, "Yes"),
        KeyDef("MaxRecvDataSegmentLength", Kind.DECLARATIVE, "8192", 512, _MAX24, numeric=True),
        _num("MaxBurstLength", Kind.MIN, 262144, 512, _MAX24),
        _num("FirstBurstLength", Kind.MIN, 65536, 512, _MAX24),
        _num("DefaultTime2Wait", Kind.MAX, 2, 0, 3600),
        _num("DefaultTime2Retain", Kind.MIN, 20, 0, 3600),
        _num("MaxOutstandingR2T", Kind.MIN, 1, 1, 65535),
        _bool("DataPDUInOrder", Kind.OR, "Yes"),
        _bool("DataSequenceInOrder", Kind.OR, "Yes"),
        _num("ErrorRecoveryLevel", Kind.MIN, 0, 0, 2),
        KeyDef("SessionType", Kind.DECLARATIVE, "Normal", choices=("Discovery", "Normal"),
               leading_only=True, sender=_I),
        # Markers are obsolete in RFC 7143 but libiscsi 1.19 still sends
        # IFMarker=No and OFMarker=No; answering them as the RFC 3720 AND keys
        # they were ("No") satisfies old and new peers alike.
        _bool("IFMarker", Kind.AND, "No"),
        _bool("OFMarker", Kind.AND, "No"),
    )
}
_MRDSL = "MaxRecvDataSegmentLength"
_TPGT = "TargetPortalGroupTag"
_IRRELEVANT_KEYS = frozenset({"IFMarkInt", "OFMarkInt"})
"""Marker intervals: irrelevant because markers are always off."""


@dataclass(slots=True)
class SessionParams:
    """Every value in force after login; MaxRecvDataSegmentLength is per direction."""

    header_digest: bool = False
    data_digest: bool = False
    max_connections: int = 1
    initial_r2t: bool = True
    immediate_data: bool = True
    initiator_mrdsl: int = 8192
    """What the initiator can receive: limit on target-sent data segments."""
    target_mrdsl: int = 8192
    """What the target can receive: limit on initiator-sent data segments."""
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    default_time2wait: int = 2
    default_time2retain: int = 20
    max_outstanding_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0
    auth_method: str = "None"
    session_type: str = "Normal"
    initiator_name: str | None = None
    target_name: str | None = None
    initiator_alias: str | None = None
    target_alias: str | None = None
    target_portal_group_tag: int | None = None
    target_address: str | None = None


def parse_number(key: str, value: str) -> int:
    """Decimal or 0x-hex numerical value (RFC 7143 §6.1)."""
    try:
        if value[:2] in ("0x", "0X"):
            return int(value[2:], 16)
        if value.isdigit():
            return int(value)
    except ValueError:
        pass
    raise NegotiationError(f"{key}={value[:32]!r} is not a number")


def _valid(kd: KeyDef, value: str) -> bool:
    if kd.numeric:
        try:
            n = parse_number(kd.name, value)
        except NegotiationError:
            return False
        return kd.lo <= n <= kd.hi
    if kd.choices and kd.kind is not Kind.LIST:
        return value in kd.choices
    return True


class Negotiator:
    """One side's negotiation of one connection's login.

    ``wants`` holds our values: for LIST keys the comma list we accept in order
    of preference, for numbers our limit (the target's ``ErrorRecoveryLevel=0``
    makes every session ERL0), for declaratives what we declare.
    ``originate`` names the keys we send unprompted; by default the initiator
    offers everything in ``wants`` and the target only declares.
    ``irrelevant`` names keys we answer with ``Irrelevant`` (RFC 7143 §6.2.1
    allows it for keys that do not apply, e.g. InitialR2T in a discovery
    session) while still catching a peer that sends them twice.
    """

    __slots__ = (
        "_irrelevant",
        "_leading",
        "_offered",
        "_originate",
        "_own",
        "_peer",
        "_received",
        "_role",
        "_sent",
        "_values",
        "_wants",
    )

    def __init__(
        self,
        role: Role,
        wants: Mapping[str, str],
        *,
        leading: bool = True,
        originate: Iterable[str] | None = None,
        irrelevant: Iterable[str] = (),
    ) -> None:
        for key in wants:
            if key not in KEYS:
                raise ValueError(f"unknown key {key} in wants")
        self._role = role
        self._wants = dict(wants)
        self._leading = leading
        if originate is None:
            originate = [
                k for k in wants if role is Role.INITIATOR or KEYS[k].kind is Kind.DECLARATIVE
            ]
        self._originate = list(originate)
        self._irrelevant = frozenset(irrelevant)
        self._offered: dict[str, str] = {}
        self._sent: set[str] = set()
        self._received: set[str] = set()
        self._values: dict[str, str] = {}
        self._own: dict[str, str] = {}
        self._peer: dict[str, str] = {}

    @property
    def awaiting_answers(self) -> bool:
        """True while an offer of ours has no answer yet (the stage cannot end)."""
        return bool(self._offered)

    def offers(self, keys: Iterable[str] | None = None) -> TextPairs:
        """Our not-yet-sent offers and declarations, optionally only ``keys``."""
        chosen = self._originate if keys is None else list(keys)
        out: TextPairs = []
        for key in chosen:
            kd = KEYS[key]
            # A peer's offer of a key settles it; its declaration does not stop ours.
            if key in self._sent or (key in self._received and kd.kind is not Kind.DECLARATIVE):
                continue
            if kd.leading_only and not self._leading:
                continue
            value = self._wants[key]
            self._sent.add(key)
            if kd.kind is Kind.DECLARATIVE:
                self._own[key] = value
            else:
                self._offered[key] = value
            out.append((key, value))
        return out

    def receive(self, pairs: Iterable[tuple[str, str]]) -> TextPairs:
        """Take the peer's keys; returns our answers to its offers."""
        answers: TextPairs = []
        for key, value in pairs:
            if key in self._received:
                raise NegotiationError(f"{key} negotiated more than once")
            self._received.add(key)
            if key in self._offered:
                self._take_answer(key, value)
            else:
                answer = self._answer(key, value)
                if answer is not None:
                    self._sent.add(key)
                    answers.append((key, answer))
        return answers

    def _take_answer(self, key: str, value: str) -> None:
        kd = KEYS[key]
        offer = self._offered.pop(key)
        if value in _SPECIAL_ANSWERS:
            return  # the key keeps its default
        if not _valid(kd, value):
            raise NegotiationError(f"answer {key}={value[:64]} is out of range")
        if kd.kind is Kind.LIST:
            ok = value in offer.split(",")
        elif kd.kind is Kind.MIN:
            ok = parse_number(key, value) <= parse_number(key, offer)
        elif kd.kind is Kind.MAX:
            ok = parse_number(key, value) >= parse_number(key, offer)
        elif kd.kind is Kind.AND:
            ok = offer == "Yes" or value == "No"
        else:
            ok = offer == "No" or value == "Yes"
        if not ok:
            raise NegotiationError(
                f"answer {key}={value} to our offer {key}={offer} breaks the "
                f"{kd.kind.value} result function"
            )
        self._values[key] = value

    def _answer(self, key: str, value: str) -> str | None:
        kd = KEYS.get(key)
        if kd is None:
            return IRRELEVANT if key in _IRRELEVANT_KEYS else NOT_UNDERSTOOD
        if kd.sender is not None and kd.sender is self._role:
            raise NegotiationError(f"{key} may only be sent by the {self._role.value}")
        if (kd.leading_only and not self._leading) or key in self._irrelevant:
            return IRRELEVANT
        if not _valid(kd, value) or value in _SPECIAL_ANSWERS:
            if kd.kind is Kind.DECLARATIVE:
                raise NegotiationError(f"declaration {key}={value[:64]} is invalid")
            return REJECT
        if kd.kind is Kind.DECLARATIVE:
            self._peer[key] = value
            return None
        ours = self._wants.get(key, kd.default)
        if kd.kind is Kind.LIST:
            acceptable = ours.split(",")
            result = next((v for v in value.split(",") if v in acceptable), REJECT)
        elif kd.kind is Kind.MIN:
            result = str(min(parse_number(key, value), parse_number(key, ours)))
        elif kd.kind is Kind.MAX:
            result = str(max(parse_number(key, value), parse_number(key, ours)))
        elif kd.kind is Kind.AND:
            result = "Yes" if value == "Yes" and ours == "Yes" else "No"
        else:
            result = "Yes" if value == "Yes" or ours == "Yes" else "No"
        if result != REJECT:
            self._values[key] = result
        return result

    def params(self) -> SessionParams:
        """The negotiated values; keys never negotiated keep their defaults."""
        v = self._values

        def num(key: str) -> int:
            return parse_number(key, v.get(key, KEYS[key].default))

        def yes(key: str) -> bool:
            return v.get(key, KEYS[key].default) == "Yes"

        initiator_decl, target_decl = (
            (self._own, self._peer) if self._role is Role.INITIATOR else (self._peer, self._own)
        )
        max_burst = num("MaxBurstLength")
        tpgt = target_decl.get("TargetPortalGroupTag")
        return SessionParams(
            header_digest=v.get("HeaderDigest") == "CRC32C",
            data_digest=v.get("DataDigest") == "CRC32C",
            max_connections=num("MaxConnections"),
            initial_r2t=yes("InitialR2T"),
            immediate_data=yes("ImmediateData"),
            initiator_mrdsl=parse_number(_MRDSL, initiator_decl.get(_MRDSL, "8192")),
            target_mrdsl=parse_number(_MRDSL, target_decl.get(_MRDSL, "8192")),
            max_burst_length=max_burst,
            # FirstBurstLength must not exceed MaxBurstLength (§13.14); both
            # are minimums, so a peer can push them apart: clamp.
            first_burst_length=min(num("FirstBurstLength"), max_burst),
            default_time2wait=num("DefaultTime2Wait"),
            default_time2retain=num("DefaultTime2Retain"),
            max_outstanding_r2t=num("MaxOutstandingR2T"),
            data_pdu_in_order=yes("DataPDUInOrder"),
            data_sequence_in_order=yes("DataSequenceInOrder"),
            error_recovery_level=num("ErrorRecoveryLevel"),
            auth_method=v.get("AuthMethod", "None"),
            session_type=initiator_decl.get("SessionType", "Normal"),
            initiator_name=initiator_decl.get("InitiatorName"),
            target_name=initiator_decl.get("TargetName"),
            initiator_alias=initiator_decl.get("InitiatorAlias"),
            target_alias=target_decl.get("TargetAlias"),
            target_portal_group_tag=None if tpgt is None else parse_number(_TPGT, tpgt),
            target_address=target_decl.get("TargetAddress"),
        )
