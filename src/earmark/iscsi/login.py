"""Login phase for both sides, sans-I/O (RFC 7143 §6.3, §11.12, §11.13).

Each side is a small state machine fed one Login PDU at a time: the target's
``receive`` returns exactly one Login Response per Login Request, the
initiator's returns the next Login Request (or None once in full feature
phase). Key negotiation is :class:`~.negotiation.Negotiator`'s job and CHAP
is :mod:`.chap`'s; this module only decides stages, transits and status codes.

Interoperability choices, all from libiscsi 1.19 (the initiator under test):

* Without credentials it sends every key in one PDU with T=1 toward full
  feature phase and needs T=1/NSG=3 in the very first reply (otherwise it
  re-sends all keys, which would be negotiating twice); the target therefore
  transits whenever the initiator asks and nothing is pending.
* With CHAP it re-declares InitiatorName, TargetName and SessionType in the
  operational stage. Re-declaring the same value is accepted; a different
  value is an initiator error.
* It reads MaxBurstLength and FirstBurstLength with strtol, so a discovery
  session answers those with numbers, not ``Irrelevant``.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .chap import ChapAuthenticator, ChapResponder, RandomSource
from .errors import AuthenticationError, NegotiationError, ProtocolError
from .negotiation import REJECT, Negotiator, Role, SessionParams
from .opcodes import LoginStatus, Stage
from .pdu import LoginRequest, LoginResponse
from .text import TextAccumulator, TextPairs, encode_text, split_text

__all__ = [
    "DEFAULT_INITIATOR_WANTS",
    "DEFAULT_TARGET_WANTS",
    "DISCOVERY_IRRELEVANT",
    "LOGIN_MAX_SEGMENT",
    "InitiatorLogin",
    "LoginFailed",
    "TargetEntry",
    "TargetLogin",
]

LOGIN_MAX_SEGMENT = 8192
"""Data segment limit during login: declared MaxRecvDataSegmentLength only
takes effect in full feature phase, until then both sides assume 8192."""

ISCSI_VERSION = 0x00

DISCOVERY_IRRELEVANT = frozenset({
    "MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength",
    "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder",
})
"""Keys RFC 7143 §13 marks "Irrelevant when: SessionType=Discovery"."""

_TARGET_DISCOVERY_IRRELEVANT = DISCOVERY_IRRELEVANT - {"MaxBurstLength", "FirstBurstLength"}
"""What the target answers ``Irrelevant``: libiscsi strtol()s the burst
lengths, so those get their (harmless) numeric result instead."""

_SESSION_LIMITS: Mapping[str, str] = {
    "MaxConnections": "1",
    "InitialR2T": "Yes",
    "ImmediateData": "Yes",
    "MaxRecvDataSegmentLength": "65536",
    "MaxBurstLength": "262144",
    "FirstBurstLength": "65536",
    "DefaultTime2Wait": "2",
    "DefaultTime2Retain": "0",
    "MaxOutstandingR2T": "1",
    "DataPDUInOrder": "Yes",
    "DataSequenceInOrder": "Yes",
    "ErrorRecoveryLevel": "0",
}
"""One connection per session, ERL 0, no retention: all that earmark's
sessions implement, so the limits are what either side can honour."""

DEFAULT_TARGET_WANTS: Mapping[str, str] = {
    "HeaderDigest": "CRC32C,None",
    "DataDigest": "CRC32C,None",
    **_SESSION_LIMITS,
}
"""The target accepts digests when the initiator asks for them."""

DEFAULT_INITIATOR_WANTS: Mapping[str, str] = {
    "HeaderDigest": "None",
    "DataDigest": "None",
    **_SESSION_LIMITS,
}
"""The initiator asks for no digests unless told to."""

_LEADING_DECLARATIONS = frozenset({"InitiatorName", "TargetName", "SessionType",
                                   "InitiatorAlias"})
"""Declarations libiscsi repeats in the operational stage after CHAP."""
_SESSION_TYPES = ("Normal", "Discovery")
_MAX_EXCHANGES = 32
"""An initiator gives up on a target that keeps answering T=0 without progress."""


def _is_chap_key(key: str) -> bool:
    return key.startswith("CHAP_")


@dataclass(frozen=True, slots=True)
class TargetEntry:
    """What login needs to know about one target; LUNs stay with the caller.

    ``chap`` is the (user, secret) the initiator must prove (one-way CHAP);
    ``mutual`` is the (user, secret) we prove to an initiator that asks.
    ``allowed_initiators`` None admits any initiator name.
    """

    iqn: str
    alias: str = ""
    chap: tuple[str, str] | None = None
    mutual: tuple[str, str] | None = None
    allowed_initiators: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.mutual is not None and self.chap is None:
            raise ValueError(f"target {self.iqn}: mutual CHAP needs one-way CHAP credentials")

    def admits(self, initiator_name: str) -> bool:
        return self.allowed_initiators is None or initiator_name in self.allowed_initiators


class _Refusal(Exception):
    """Unwinds a request the target refuses; becomes a status != 0 response."""

    def __init__(self, status: LoginStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _constant_tsih() -> int:
    return 1


class TargetLogin:
    """Target side of the login of one connection.

    ``receive`` never raises for anything the initiator sends: a refusal is a
    Login Response with status != 0 (``failed`` turns true and ``reason``
    says why, for the log); the caller sends it and closes the connection.
    Every response consumes one StatSN: pass the connection's next StatSN
    each time (RFC 7143 §11.13.4). ``wants`` overrides
    :data:`DEFAULT_TARGET_WANTS` key by key. ``allocate_tsih`` is called once,
    on success, and must return a nonzero TSIH unique among live sessions.
    ``admits(initiator, isid)`` False refuses a normal session with OUT OF RESOURCES
    (a cap on one initiator's sessions).
    Adding a connection to an existing session (TSIH != 0) is refused with
    SESSION_DOES_NOT_EXIST: earmark sessions have exactly one connection.
    """

    def __init__(
        self,
        targets: Mapping[str, TargetEntry],
        *,
        portal_group_tag: int,
        wants: Mapping[str, str] | None = None,
        random: RandomSource = secrets.token_bytes,
        allocate_tsih: Callable[[], int] = _constant_tsih,
        admits: Callable[[str, int], bool] | None = None,
    ) -> None:
        self._targets = targets
        self._admits = admits
        self._tpgt = portal_group_tag
        self._wants = {**DEFAULT_TARGET_WANTS, **(wants or {})}
        self._random = random
        self._allocate_tsih = allocate_tsih
        self._text = TextAccumulator()
        self._outgoing: list[bytes] = []
        self._stage: int | None = None
        self._itt = 0
        self._negotiator: Negotiator | None = None
        self._chap: ChapAuthenticator | None = None
        self._auth_method: str | None = None
        self._declared: dict[str, str] = {}
        self._transit = False
        self._nsg = 0
        self.done = False
        self.failed = False
        self.status = LoginStatus.SUCCESS
        self.reason = ""
        self.target: TargetEntry | None = None
        self.initiator_name: str | None = None
        self.session_type: str | None = None
        self.isid = 0
        self.tsih = 0

    @property
    def params(self) -> SessionParams:
        """Negotiated values (defaults until negotiation has started)."""
        return SessionParams() if self._negotiator is None else self._negotiator.params()

    def receive(
        self, req: LoginRequest, *, exp_cmd_sn: int, max_cmd_sn: int, stat_sn: int
    ) -> LoginResponse:
        if self.done or self.failed:
            raise RuntimeError("login already finished; the session handles further PDUs")
        resp = LoginResponse(
            isid=req.isid, itt=req.itt, stat_sn=stat_sn, exp_cmd_sn=exp_cmd_sn,
            max_cmd_sn=max_cmd_sn, version_max=ISCSI_VERSION, version_active=ISCSI_VERSION,
        )
        try:
            self._respond(req, resp)
        except _Refusal as refusal:
            self.failed = True
            self.status = refusal.status
            self.reason = refusal.reason
            resp.status_class = refusal.status.status_class
            resp.status_detail = refusal.status.status_detail
            resp.transit = resp.continue_ = False
            resp.csg = self._stage or 0
            resp.nsg = resp.tsih = 0
            resp.data = b""
        return resp

    # ------------------------------------------------------------ stages

    def _respond(self, req: LoginRequest, resp: LoginResponse) -> None:
        self._check_header(req)
        assert self._stage is not None
        resp.csg = self._stage
        if self._outgoing:
            # The initiator acknowledges a C=1 piece of ours with an empty request.
            if req.data or req.continue_:
                raise _Refusal(LoginStatus.INITIATOR_ERROR,
                               "login request carried text while our response continued")
            self._send_piece(resp)
            return
        try:
            pairs = self._text.add(req.data, req.continue_)
        except ProtocolError as exc:
            raise _Refusal(LoginStatus.INITIATOR_ERROR, exc.reason) from None
        if pairs is None:
            return  # RFC 7143 §6.3: a C=1 request gets an empty response
        answers = self._negotiate(pairs)
        transit = self._authenticated(req.transit) and req.transit
        nsg = req.nsg if transit else 0
        negotiator = self._negotiator
        assert negotiator is not None
        if self.session_type == "Normal":
            # Mandatory in the first response of a normal session (§13.9);
            # offers() skips it once sent.
            answers += negotiator.offers(["TargetPortalGroupTag"])
        if self._stage == Stage.LOGIN_OPERATIONAL_NEGOTIATION or nsg == Stage.FULL_FEATURE_PHASE:
            answers += negotiator.offers()
        self._outgoing = split_text(encode_text(answers), LOGIN_MAX_SEGMENT)
        self._transit, self._nsg = transit, nsg
        self._send_piece(resp)

    def _send_piece(self, resp: LoginResponse) -> None:
        resp.data = self._outgoing.pop(0)
        if self._outgoing:
            resp.continue_ = True
            return
        if not self._transit:
            return
        resp.transit = True
        resp.nsg = self._nsg
        if self._nsg == Stage.FULL_FEATURE_PHASE:
            self.tsih = resp.tsih = self._allocate_tsih()
            self.done = True
        self._stage = self._nsg

    def _check_header(self, req: LoginRequest) -> None:
        if self._stage is None:
            if req.version_min > ISCSI_VERSION:
                raise _Refusal(LoginStatus.UNSUPPORTED_VERSION,
                               f"initiator needs iSCSI version >= {req.version_min}; we speak 0")
            if req.tsih != 0:
                raise _Refusal(LoginStatus.SESSION_DOES_NOT_EXIST,
                               f"TSIH {req.tsih}: adding connections to sessions is not supported")
            if req.csg not in (Stage.SECURITY_NEGOTIATION, Stage.LOGIN_OPERATIONAL_NEGOTIATION):
                raise _Refusal(LoginStatus.INITIATOR_ERROR, f"login starts with CSG={req.csg}")
            self._stage = req.csg
            self.isid = req.isid
            self._itt = req.itt
        elif req.isid != self.isid or req.itt != self._itt or req.tsih != 0:
            raise _Refusal(LoginStatus.INITIATOR_ERROR,
                           "ISID, ITT or TSIH changed in the middle of the login")
        elif req.csg != self._stage:
            raise _Refusal(LoginStatus.INITIATOR_ERROR,
                           f"login request has CSG={req.csg}, the login is in stage {self._stage}")
        if req.transit:
            if req.continue_:
                raise _Refusal(LoginStatus.INITIATOR_ERROR, "login request with both T and C set")
            if req.nsg not in (Stage.LOGIN_OPERATIONAL_NEGOTIATION, Stage.FULL_FEATURE_PHASE) or (
                req.nsg <= req.csg
            ):
                raise _Refusal(LoginStatus.INITIATOR_ERROR,
                               f"transit from stage {req.csg} to NSG={req.nsg}")

    # ------------------------------------------------------ negotiation

    def _negotiate(self, pairs: TextPairs) -> TextPairs:
        keys: TextPairs = []
        chap_keys: dict[str, str] = {}
        for key, value in pairs:
            if _is_chap_key(key):
                chap_keys[key] = value
            elif key in _LEADING_DECLARATIONS and key in self._declared:
                if self._declared[key] != value:
                    raise _Refusal(LoginStatus.INITIATOR_ERROR,
                                   f"{key} re-declared with a different value")
            else:
                if key in _LEADING_DECLARATIONS:
                    self._declared[key] = value
                keys.append((key, value))
        if self._negotiator is None:
            self._negotiator = self._identify()
        operational = self._stage == Stage.LOGIN_OPERATIONAL_NEGOTIATION
        if operational and (chap_keys or any(k == "AuthMethod" for k, _ in keys)):
            raise _Refusal(LoginStatus.INITIATOR_ERROR,
                           "security keys sent in the operational stage")
        try:
            answers = self._negotiator.receive(keys)
        except NegotiationError as exc:
            raise _Refusal(LoginStatus.INITIATOR_ERROR, exc.reason) from None
        for key, value in answers:
            if key == "AuthMethod":
                self._choose_auth(value)
        if chap_keys:
            answers += self._authenticate(chap_keys)
        return answers

    def _identify(self) -> Negotiator:
        """Session type, target, ACL: all known from the first complete text."""
        name = self._declared.get("InitiatorName")
        if not name:
            raise _Refusal(LoginStatus.MISSING_PARAMETER, "no InitiatorName in the first request")
        self.initiator_name = name
        session_type = self._declared.get("SessionType", "Normal")
        if session_type not in _SESSION_TYPES:
            raise _Refusal(LoginStatus.SESSION_TYPE_NOT_SUPPORTED,
                           f"SessionType={session_type[:32]!r}")
        self.session_type = session_type
        wants = dict(self._wants)
        if session_type == "Discovery":
            return Negotiator(Role.TARGET, wants, irrelevant=_TARGET_DISCOVERY_IRRELEVANT)
        target_name = self._declared.get("TargetName")
        if not target_name:
            raise _Refusal(LoginStatus.MISSING_PARAMETER, "normal session without TargetName")
        target = self._targets.get(target_name)
        if target is None:
            raise _Refusal(LoginStatus.NOT_FOUND, f"no target {target_name[:64]!r}")
        if not target.admits(name):
            raise _Refusal(LoginStatus.AUTHORIZATION_FAILURE,
                           f"initiator {name[:64]!r} is not allowed on {target.iqn}")
        if self._admits is not None and not self._admits(name, self.isid):
            raise _Refusal(LoginStatus.OUT_OF_RESOURCES,
                           f"initiator {name[:64]!r} has as many sessions as it may")
        self.target = target
        wants["TargetPortalGroupTag"] = str(self._tpgt)
        if target.alias:
            wants["TargetAlias"] = target.alias
        wants["AuthMethod"] = "None" if target.chap is None else "CHAP"
        return Negotiator(Role.TARGET, wants)

    def _choose_auth(self, answer: str) -> None:
        if answer == REJECT:
            required = "CHAP" if self._needs_chap() else "None"
            raise _Refusal(LoginStatus.AUTHENTICATION_FAILURE,
                           f"no acceptable AuthMethod offered; this target requires {required}")
        self._auth_method = answer
        if answer == "CHAP":
            assert self.target is not None and self.target.chap is not None
            user, secret = self.target.chap
            mutual = self.target.mutual
            self._chap = ChapAuthenticator(
                lambda name: secret.encode() if name == user else None,
                target_user=None if mutual is None else mutual[0],
                target_secret=None if mutual is None else mutual[1].encode(),
                random=self._random,
            )

    def _authenticate(self, keys: Mapping[str, str]) -> TextPairs:
        if self._chap is None or self._chap.done:
            raise _Refusal(LoginStatus.INITIATOR_ERROR, "CHAP keys outside a CHAP exchange")
        try:
            return self._chap.receive(keys)
        except ProtocolError as exc:
            raise _Refusal(LoginStatus.AUTHENTICATION_FAILURE, exc.reason) from None

    def _needs_chap(self) -> bool:
        return self.target is not None and self.target.chap is not None

    def _authenticated(self, transit_requested: bool) -> bool:
        """Whether the initiator may leave the security stage; refuses a skip.

        CHAP under way just withholds T=1: libiscsi asks to transit in the
        very PDU that offers AuthMethod=CHAP.
        """
        if not self._needs_chap():
            return True
        done = self._chap is not None and self._chap.done
        skipped = self._stage == Stage.LOGIN_OPERATIONAL_NEGOTIATION or (
            self._chap is None and transit_requested
        )
        if skipped and not done:
            raise _Refusal(LoginStatus.AUTHENTICATION_FAILURE,
                           "initiator skipped authentication; this target requires CHAP")
        return done


_STATUS_HELP: dict[int, tuple[str, str]] = {
    LoginStatus.TARGET_MOVED_TEMPORARILY: (
        "target moved temporarily", "log in at the TargetAddress the target returned"),
    LoginStatus.TARGET_MOVED_PERMANENTLY: (
        "target moved permanently", "update the portal to the TargetAddress the target returned"),
    LoginStatus.INITIATOR_ERROR: (
        "initiator error", "the target found our login malformed; see the target's log"),
    LoginStatus.AUTHENTICATION_FAILURE: (
        "authentication failed", "check the CHAP user and secret"),
    LoginStatus.AUTHORIZATION_FAILURE: (
        "authorization failure", "add this initiator name to the target's ACL"),
    LoginStatus.NOT_FOUND: (
        "target not found", "check the target name (SendTargets discovery lists them)"),
    LoginStatus.TARGET_REMOVED: (
        "target removed", "the target no longer exists at this portal"),
    LoginStatus.UNSUPPORTED_VERSION: (
        "unsupported version", "the target does not speak iSCSI version 0 (RFC 7143)"),
    LoginStatus.TOO_MANY_CONNECTIONS: (
        "too many connections", "close other connections to this target first"),
    LoginStatus.MISSING_PARAMETER: (
        "missing parameter", "the target needs a key we did not send; see the target's log"),
    LoginStatus.CANT_INCLUDE_IN_SESSION: (
        "cannot include connection in session", "log in with TSIH 0 for a new session"),
    LoginStatus.SESSION_TYPE_NOT_SUPPORTED: (
        "session type not supported", "this target does not allow this session type"),
    LoginStatus.SESSION_DOES_NOT_EXIST: (
        "session does not exist", "log in with TSIH 0 for a new session"),
    LoginStatus.INVALID_DURING_LOGIN: (
        "invalid request during login", "the target found our login out of order"),
    LoginStatus.TARGET_ERROR: ("target error", "see the target's log; retry later"),
    LoginStatus.SERVICE_UNAVAILABLE: ("service unavailable", "retry later"),
    LoginStatus.OUT_OF_RESOURCES: (
        "target out of resources", "retry later or free resources on the target"),
}


class LoginFailed(Exception):
    """The target refused the login; ``status`` is its Status-Class/Detail.

    ``status`` is a :class:`LoginStatus`, or the raw int for codes RFC 7143
    does not define.
    """

    def __init__(self, status: LoginStatus | int, target_address: str | None = None) -> None:
        words, fix = _STATUS_HELP.get(status, ("unknown status", "see the target's log"))
        if target_address is not None and status >> 8 == 1:
            fix = f"{fix} ({target_address})"
        super().__init__(f"login refused: {words} (0x{status:04x}): {fix}")
        self.status = status
        self.target_address = target_address


class InitiatorLogin:
    """Initiator side of the login of one connection.

    ``target_name`` None makes a discovery session. Without ``chap`` the
    login skips security negotiation and sends every key in one PDU (one
    round trip if the target agrees at once). With ``chap`` it offers
    ``AuthMethod=CHAP,None`` (only ``CHAP`` when ``mutual`` is set, so a
    target cannot skip proving itself) and CHAP_A from ``chap_algorithms``:
    MD5 (5) only by default, the one algorithm every peer agrees on.
    ``wants`` overrides :data:`DEFAULT_INITIATOR_WANTS` key by key.

    ``receive`` raises :class:`LoginFailed` for a refusal and
    :class:`~.errors.ProtocolError` (or its Negotiation/Authentication
    subclasses) when the target breaks the protocol or fails mutual CHAP;
    either way the caller closes the connection.
    """

    def __init__(
        self,
        initiator_name: str,
        *,
        target_name: str | None,
        isid: int,
        chap: tuple[str, str] | None = None,
        mutual: tuple[str, str] | None = None,
        wants: Mapping[str, str] | None = None,
        cmd_sn: int = 1,
        itt: int = 0,
        cid: int = 0,
        chap_algorithms: Sequence[int] = (5,),
        random: RandomSource = secrets.token_bytes,
    ) -> None:
        if mutual is not None and chap is None:
            raise ValueError("mutual CHAP needs one-way CHAP credentials too")
        declared = {"InitiatorName": initiator_name,
                    "SessionType": "Discovery" if target_name is None else "Normal"}
        if target_name is not None:
            declared["TargetName"] = target_name
        self._first_keys = list(declared)
        all_wants = {**declared, **DEFAULT_INITIATOR_WANTS, **(wants or {})}
        if chap is not None:
            all_wants["AuthMethod"] = "CHAP" if mutual is not None else "CHAP,None"
            self._first_keys.append("AuthMethod")
        originate = [
            k for k in all_wants if target_name is not None or k not in DISCOVERY_IRRELEVANT
        ]
        self._negotiator = Negotiator(Role.INITIATOR, all_wants, originate=originate)
        self._responder = None if chap is None else ChapResponder(
            chap[0], chap[1].encode(), algorithms=chap_algorithms,
            target_user=None if mutual is None else mutual[0],
            target_secret=None if mutual is None else mutual[1].encode(),
            random=random,
        )
        self._chap_chosen = False
        self._stage = (Stage.SECURITY_NEGOTIATION if chap is not None
                       else Stage.LOGIN_OPERATIONAL_NEGOTIATION)
        self._text = TextAccumulator()
        self._exchanges = 0
        self.isid = isid
        self.itt = itt
        self.cid = cid
        self.cmd_sn = cmd_sn
        """CmdSN of the login, and of the first non-immediate command after it."""
        self.exp_stat_sn = 0
        self.exp_cmd_sn = cmd_sn
        self.max_cmd_sn = cmd_sn
        self.tsih = 0
        self.done = False

    @property
    def params(self) -> SessionParams:
        return self._negotiator.params()

    def start(self) -> LoginRequest:
        if self._stage == Stage.SECURITY_NEGOTIATION:
            return self._request(self._negotiator.offers(self._first_keys),
                                 transit=True, nsg=Stage.LOGIN_OPERATIONAL_NEGOTIATION)
        return self._request(self._negotiator.offers(), transit=True,
                             nsg=Stage.FULL_FEATURE_PHASE)

    def receive(self, resp: LoginResponse) -> LoginRequest | None:
        if self.done:
            raise RuntimeError("login already finished")
        self._exchanges += 1
        if self._exchanges > _MAX_EXCHANGES:
            raise ProtocolError(f"login not finished after {_MAX_EXCHANGES} exchanges")
        status = resp.status_class << 8 | resp.status_detail
        if status:
            address = None
            with contextlib.suppress(ProtocolError):  # the refusal matters, not bad text
                address = dict(self._text.add(resp.data, False) or []).get("TargetAddress")
            try:
                code: LoginStatus | int = LoginStatus(status)
            except ValueError:
                code = status
            raise LoginFailed(code, address)
        if resp.itt != self.itt or resp.isid != self.isid:
            raise ProtocolError("login response for another ITT or ISID")
        if resp.csg != self._stage:
            raise ProtocolError(f"login response in stage {resp.csg}, we are in {self._stage}")
        if resp.transit and resp.continue_:
            raise ProtocolError("login response with both T and C set")
        self.exp_stat_sn = (resp.stat_sn + 1) & 0xFFFFFFFF
        self.exp_cmd_sn, self.max_cmd_sn = resp.exp_cmd_sn, resp.max_cmd_sn
        pairs = self._text.add(resp.data, resp.continue_)
        if pairs is None:  # the target continues its text: ask for the rest
            return self._request([], transit=False, nsg=0)
        chap_keys = {k: v for k, v in pairs if _is_chap_key(k)}
        answers = self._negotiator.receive([(k, v) for k, v in pairs if not _is_chap_key(k)])
        out: TextPairs = []
        if self._responder is not None and dict(pairs).get("AuthMethod") == "CHAP":
            self._chap_chosen = True
            out = self._responder.start()
        if chap_keys:
            if self._responder is None or not self._chap_chosen:
                raise AuthenticationError("target sent CHAP keys without choosing CHAP")
            out = self._responder.receive(chap_keys)
        if resp.transit:
            return self._next_stage(resp, answers)
        if self._stage == Stage.SECURITY_NEGOTIATION:
            # T=1 once our CHAP response goes out (libiscsi does the same).
            return self._request(answers + out, transit=bool(chap_keys) or not self._chap_chosen,
                                 nsg=Stage.LOGIN_OPERATIONAL_NEGOTIATION)
        return self._request(answers + self._negotiator.offers(), transit=True,
                             nsg=Stage.FULL_FEATURE_PHASE)

    def _next_stage(self, resp: LoginResponse, answers: TextPairs) -> LoginRequest | None:
        if resp.nsg <= self._stage or resp.nsg not in (
            Stage.LOGIN_OPERATIONAL_NEGOTIATION, Stage.FULL_FEATURE_PHASE
        ):
            raise ProtocolError(f"target transits from stage {self._stage} to {resp.nsg}")
        if self._stage == Stage.SECURITY_NEGOTIATION and self._responder is not None:
            if self._chap_chosen and not self._responder.done:
                raise AuthenticationError("target ended security negotiation before CHAP "
                                          "finished (mutual CHAP needs its CHAP_N/CHAP_R)")
            if not self._chap_chosen and self.params.auth_method != "None":
                raise AuthenticationError("target ended security negotiation without "
                                          "choosing an AuthMethod")
        if self._negotiator.awaiting_answers:
            raise NegotiationError("target ended the stage without answering all our keys")
        self._stage = Stage(resp.nsg)
        if self._stage == Stage.FULL_FEATURE_PHASE:
            if answers:
                raise NegotiationError("target offered keys while entering full feature phase")
            if resp.tsih == 0:
                raise ProtocolError("target entered full feature phase with TSIH 0")
            self.tsih = resp.tsih
            self.done = True
            return None
        return self._request(answers + self._negotiator.offers(), transit=True,
                             nsg=Stage.FULL_FEATURE_PHASE)

    def _request(self, pairs: TextPairs, *, transit: bool, nsg: int) -> LoginRequest:
        return LoginRequest(
            isid=self.isid, itt=self.itt, cid=self.cid, cmd_sn=self.cmd_sn,
            exp_stat_sn=self.exp_stat_sn, transit=transit, csg=self._stage,
            nsg=nsg if transit else 0, version_max=ISCSI_VERSION, version_min=ISCSI_VERSION,
            data=encode_text(pairs),
        )
