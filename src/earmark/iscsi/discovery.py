"""SendTargets and the Text Request/Response exchange, sans-I/O.

A SendTargets answer (RFC 7143 Appendix C) can outgrow one PDU, so the Text
exchange carries it in pieces (§11.10, §11.11): every piece but the last goes
with F=0, C=1 and a Target Transfer Tag; the initiator fetches the next one
with an empty Text Request echoing that tag; the last piece has F=1 and the
reserved TTT. :class:`TextResponder` is the target's side of that exchange
and :class:`TextRequester` the initiator's.

libiscsi 1.19 parses a SendTargets reply only from a single F=1 PDU and
expects each TargetAddress to follow its TargetName, which is the order and
shape produced here whenever the answer fits its 256 KiB
MaxRecvDataSegmentLength.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from .errors import ProtocolError
from .login import TargetEntry
from .negotiation import NOT_UNDERSTOOD
from .pdu import RESERVED_TAG, TextRequest, TextResponse
from .text import (
    DEFAULT_TEXT_LIMIT,
    TextAccumulator,
    TextPairs,
    decode_text,
    encode_text,
    split_text,
)

__all__ = [
    "DiscoveredTarget",
    "Portal",
    "TextRequester",
    "TextResponder",
    "discovery_answer",
    "format_target_address",
    "parse_send_targets",
    "parse_target_address",
    "send_targets_from_pairs",
    "send_targets_response",
]

SEND_TARGETS = "SendTargets"


class Portal(NamedTuple):
    """A network portal and the portal group it belongs to."""

    host: str
    port: int
    tpgt: int


@dataclass(frozen=True, slots=True)
class DiscoveredTarget:
    name: str
    addresses: tuple[str, ...]
    """TargetAddress values, ``host:port,tpgt``; see :func:`parse_target_address`."""


def format_target_address(portal: Portal) -> str:
    """``host:port,tpgt``, with IPv6 literals in brackets (RFC 7143 §13.8)."""
    host = f"[{portal.host}]" if ":" in portal.host else portal.host
    return f"{host}:{portal.port},{portal.tpgt}"


def parse_target_address(address: str, default_port: int = 3260) -> Portal:
    """Inverse of :func:`format_target_address`; port and tag are optional."""
    rest, _, tag = address.partition(",")
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ProtocolError(f"TargetAddress {address[:80]!r} is malformed")
        port_text = tail[1:]
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host, port_text = rest, ""
    try:
        port = int(port_text) if port_text else default_port
        tpgt = int(tag) if tag else 1
    except ValueError:
        raise ProtocolError(f"TargetAddress {address[:80]!r} has a bad port or tag") from None
    if not host or not 0 < port < 65536 or not 0 <= tpgt < 65536:
        raise ProtocolError(f"TargetAddress {address[:80]!r} is out of range")
    return Portal(host, port, tpgt)


def send_targets_response(
    targets: Mapping[str, TargetEntry] | Iterable[TargetEntry],
    portals: Iterable[Portal],
    key_value: str,
    *,
    initiator_name: str,
    session_target: str | None = None,
) -> bytes:
    """Text data answering ``SendTargets=key_value`` (RFC 7143 Appendix C).

    ``All`` lists every target this initiator may log in to; a target name
    lists that target if visible; an empty value lists ``session_target``
    (the target of a normal session). Targets whose ACL excludes the
    initiator are left out, as if they did not exist, so discovery does not
    reveal them.
    """
    entries = list(targets.values()) if isinstance(targets, Mapping) else list(targets)
    addresses = [("TargetAddress", format_target_address(p)) for p in portals]
    if key_value == "All":
        chosen = entries
    else:
        wanted = key_value or session_target
        chosen = [t for t in entries if t.iqn == wanted]
    pairs: TextPairs = []
    for target in chosen:
        if target.admits(initiator_name):
            pairs.append(("TargetName", target.iqn))
            pairs += addresses
    return encode_text(pairs)


def send_targets_from_pairs(pairs: TextPairs) -> list[DiscoveredTarget]:
    """Group TargetName/TargetAddress pairs; other keys (TargetAlias) are skipped."""
    found: list[tuple[str, list[str]]] = []
    for key, value in pairs:
        if key == "TargetName":
            found.append((value, []))
        elif key == "TargetAddress":
            if not found:
                raise ProtocolError("SendTargets answer has a TargetAddress before any TargetName")
            found[-1][1].append(value)
    return [DiscoveredTarget(name, tuple(addresses)) for name, addresses in found]


def parse_send_targets(data: bytes | memoryview) -> list[DiscoveredTarget]:
    return send_targets_from_pairs(decode_text(data))


def discovery_answer(
    targets: Mapping[str, TargetEntry],
    portals: Iterable[Portal],
    *,
    initiator_name: str,
    session_target: str | None = None,
) -> Callable[[TextPairs], bytes]:
    """An ``answer`` for :class:`TextResponder`: SendTargets, nothing else.

    Any other key gets NotUnderstood; a repeated SendTargets is answered
    once per occurrence, which is what the initiator asked for.
    """
    portal_list = list(portals)

    def answer(pairs: TextPairs) -> bytes:
        out = b""
        for key, value in pairs:
            if key == SEND_TARGETS:
                out += send_targets_response(targets, portal_list, value,
                                             initiator_name=initiator_name,
                                             session_target=session_target)
            else:
                out += encode_text([(key, NOT_UNDERSTOOD)])
        return out

    return answer


class TextResponder:
    """Target side of Text exchanges on one connection.

    ``answer`` turns the complete text of a request into response text.
    ``max_segment`` is the initiator's MaxRecvDataSegmentLength. Each
    response consumes one StatSN, passed in by the caller. A request that
    breaks the exchange rules raises :class:`~.errors.ProtocolError`; the
    session answers it with a Reject.
    """

    __slots__ = ("_answer", "_final", "_itt", "_max_segment", "_next_ttt", "_pieces", "_text",
                 "_ttt")

    def __init__(self, answer: Callable[[TextPairs], bytes], *, max_segment: int) -> None:
        self._answer = answer
        self._max_segment = max_segment
        self._text = TextAccumulator()
        self._pieces: list[bytes] = []
        self._final = True
        self._itt = RESERVED_TAG
        self._ttt = RESERVED_TAG
        self._next_ttt = 1

    def receive(
        self, req: TextRequest, *, stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int
    ) -> TextResponse:
        if req.continue_ and req.final:
            raise ProtocolError("Text Request with both F and C set")
        if req.ttt == RESERVED_TAG:
            # A new exchange; it abandons any unfinished one (RFC 7143 §11.10.4).
            self._text.reset()
            self._pieces = []
            self._itt = req.itt
            self._ttt = RESERVED_TAG
        elif req.ttt != self._ttt or req.itt != self._itt:
            raise ProtocolError(f"Text Request with TTT 0x{req.ttt:08x} that we did not issue")
        resp = TextResponse(itt=req.itt, stat_sn=stat_sn, exp_cmd_sn=exp_cmd_sn,
                            max_cmd_sn=max_cmd_sn, lun=req.lun)
        if self._pieces:
            if req.data or req.continue_:
                raise ProtocolError("Text Request with text while our response continues")
        else:
            pairs = self._text.add(req.data, req.continue_)
            if pairs is None:  # the initiator's text continues: empty reply, F=0
                resp.final = False
                resp.ttt = self._tag()
                return resp
            self._pieces = split_text(self._answer(pairs), self._max_segment)
            self._final = req.final
        resp.data = self._pieces.pop(0)
        if self._pieces:
            resp.final, resp.continue_ = False, True
        else:
            resp.final = self._final
        resp.ttt = RESERVED_TAG if resp.final else self._tag()
        return resp

    def _tag(self) -> int:
        """One TTT per exchange, never the reserved value."""
        if self._ttt == RESERVED_TAG:
            self._ttt = self._next_ttt
            self._next_ttt = self._next_ttt % 0xFFFFFFFE + 1
        return self._ttt


class TextRequester:
    """Initiator side of one Text exchange: send ``pairs``, collect the answer.

    CmdSN and ExpStatSN come from the session for every request. Requests
    are immediate by default, as libiscsi sends SendTargets, so they need no
    CmdSN window. The answer is limited to ``limit`` bytes in all.
    """

    __slots__ = ("_immediate", "_lun", "_pairs", "_text", "done", "itt", "pairs")

    def __init__(
        self,
        pairs: TextPairs,
        *,
        itt: int,
        immediate: bool = True,
        lun: int = 0,
        limit: int = 16 * DEFAULT_TEXT_LIMIT,
    ) -> None:
        self._pairs = pairs
        self.itt = itt
        self._immediate = immediate
        self._lun = lun
        self._text = TextAccumulator(limit)
        self.pairs: TextPairs = []
        """The complete answer, once ``done``."""
        self.done = False

    def start(self, *, cmd_sn: int, exp_stat_sn: int) -> TextRequest:
        return TextRequest(itt=self.itt, cmd_sn=cmd_sn, exp_stat_sn=exp_stat_sn, lun=self._lun,
                           immediate=self._immediate, data=encode_text(self._pairs))

    def receive(
        self, resp: TextResponse, *, cmd_sn: int, exp_stat_sn: int
    ) -> TextRequest | None:
        """The request fetching the next piece, or None when the answer is complete."""
        if self.done:
            raise ProtocolError("Text Response after the exchange ended")
        if resp.itt != self.itt:
            raise ProtocolError(f"Text Response for ITT 0x{resp.itt:08x}, expected "
                                f"0x{self.itt:08x}")
        if resp.final and (resp.continue_ or resp.ttt != RESERVED_TAG):
            raise ProtocolError("final Text Response with C set or a TTT")
        if not resp.final and resp.ttt == RESERVED_TAG:
            raise ProtocolError("non-final Text Response without a TTT")
        # Pieces split at key boundaries (C=0, F=0) join the same way as C=1 ones.
        pairs = self._text.add(resp.data, not resp.final)
        if pairs is not None:
            self.pairs = pairs
            self.done = True
            return None
        return TextRequest(itt=self.itt, ttt=resp.ttt, cmd_sn=cmd_sn, exp_stat_sn=exp_stat_sn,
                           lun=self._lun, immediate=self._immediate)
