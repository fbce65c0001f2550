"""One connection's login phase, sans-I/O: the login's command window and StatSN, and what
a finished login becomes (a session now, a session once the one it reinstates is over,
or a refusal to send before closing).

A login that reinstates a session (RFC 7143 §6.3.5) is answered only once the old
session's I/O is over: its final response is held here, not sent, so the initiator
cannot issue a command that would overtake a write of the old session still on its
way to the disk; :meth:`LoginPhase.reinstated` gives it back when the portal says the
old one has drained."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from earmark.iscsi.discovery import TextResponder
from earmark.iscsi.errors import ProtocolError
from earmark.iscsi.framing import serialize
from earmark.iscsi.login import TargetLogin
from earmark.iscsi.pdu import LoginRequest, Pdu, WireBytes
from earmark.iscsi.stream import Framer
from earmark.memory import Reservation
from earmark.scsi.reservations import Nexus
from earmark.target.portal import PORTAL_GROUP_TAG, START, Start, TargetPortal, WaitFor
from earmark.target.session import TargetSession

_MOD = 1 << 32


@dataclass(frozen=True, slots=True)
class Refused:
    """Send the response, then close: the login is refused for `reason`."""

    reason: str


#: What one login PDU leads to; None: the login goes on.
LoginStep = Start | WaitFor | Refused | None


class LoginPhase:
    __slots__ = ("_cmd_sn", "_conn_id", "_held", "_login", "_portal", "_stat_sn")

    def __init__(self, portal: TargetPortal, conn_id: int) -> None:
        self._portal = portal
        self._conn_id = conn_id
        # A partial, not a method of ours: the login referring back to this phase would
        # be a cycle, freed only by the cyclic collector (see `TargetConnection._drained`).
        self._login = TargetLogin(portal.entries, portal_group_tag=PORTAL_GROUP_TAG,
                                  wants=portal.login_wants,
                                  allocate_tsih=partial(portal.allocate_tsih, conn_id),
                                  admits=portal.admits)
        self._stat_sn = 0
        self._cmd_sn = 0
        self._held: list[WireBytes] = []

    def receive(self, pdu: Pdu) -> tuple[list[WireBytes], LoginStep]:
        """The response's wire pieces, and what to do once they are sent (on
        :class:`WaitFor` there are none: the response waits for :meth:`reinstated`)."""
        if not isinstance(pdu, LoginRequest):
            raise ProtocolError(f"{type(pdu).__name__} before login completed")
        login = self._login
        # Login is immediate: the first command reuses the login's CmdSN.
        self._cmd_sn = pdu.cmd_sn
        resp = login.receive(
            pdu, exp_cmd_sn=pdu.cmd_sn,
            max_cmd_sn=(pdu.cmd_sn + self._portal.login_window - 1) % _MOD,
            stat_sn=self._stat_sn,
        )
        self._stat_sn = (self._stat_sn + 1) % _MOD
        pieces = serialize(resp, False, False)
        if login.failed:
            return pieces, Refused(login.reason)
        if not login.done:
            self._portal.login_answered(self._conn_id)
            return pieces, None
        if login.target is None:  # discovery: no nexus to reinstate
            return pieces, START
        step = self._portal.login_done(self._conn_id, self.initiator, login.isid)
        if type(step) is WaitFor:
            self._held = pieces
            return [], step
        return pieces, step

    def reinstated(self) -> list[WireBytes]:
        """The sessions this login reinstates are over: the final response held for that,
        to send before the session starts ([]: none is held)."""
        held, self._held = self._held, []
        return held

    @property
    def initiator(self) -> str:
        return self._login.initiator_name or "?"

    @property
    def what(self) -> str:
        """The session, in words, for the log."""
        target = self._login.target
        return (f"{self._login.session_type} session for {self.initiator} with "
                f"{target.iqn if target is not None else 'discovery'}")

    def start(self, slots: list[Reservation], *, name: str, now: float,
              framer: Framer | None = None) -> tuple[TargetSession, bool]:
        """The session, as :meth:`session`, and now the portal's; True: the shares of slots
        changed, so every session may want more (or fewer) now."""
        session = self.session(slots, name=name, now=now, framer=framer)
        return session, self._portal.session_started(self._conn_id, session)

    def session(self, slots: list[Reservation], *, name: str, now: float,
                framer: Framer | None = None) -> TargetSession:
        """The full-feature session of the finished login, holding `slots`; the
        connection's `framer` takes the limits and digests negotiated for it, and asks
        the session where Data-Out lands."""
        login = self._login
        params = login.params
        iqn = login.target.iqn if login.target is not None else None
        portal = self._portal
        session = TargetSession(
            params, portal.units_of(iqn) if iqn is not None else {}, exp_cmd_sn=self._cmd_sn,
            stat_sn=self._stat_sn, slots=slots, config=portal.config, name=name, now=now,
            text=TextResponder(portal.text_answer(self.initiator, iqn),
                               max_segment=params.initiator_mrdsl),
            nexus=Nexus(self.initiator, login.isid), counters=portal.counters,
        )
        if framer is not None:
            framer.set_full_feature(params.target_mrdsl, params.header_digest,
                                    params.data_digest)
            framer.placement = session.placement
        return session
