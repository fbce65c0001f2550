"""The target's front desk, sans-I/O: who may log in to what, one session per I_T nexus,
TSIHs, each session's fair share of command slots, and the memory a connection starts with.

Connections are plain ids the portal hands out, so every decision here can be driven
and tested without a socket; the runtime maps an id back to its connection.

* Fair share. A session keeps the slots it was granted (no re-reserving per
  command), so without a limit the first sessions would hold the arena and the
  rest would wait forever for their first slot. Each session's `slot_target` is
  its share of what the arena can hold, counting one session more than there
  is (room for the next to log in); a session above it hands slots back as its
  commands finish.
* Reinstatement (RFC 7143 §6.3.5). A login of a nexus that already has a session
  reinstates it: the old session's tasks must end before the new one begins, so a
  write of the old one still on its way to the disk cannot land after the new
  session's writes. The waiting login is already the nexus's session: a later
  login of the nexus reinstates it in turn and waits for the whole chain to drain.
* Logins cost what logins need. A connection that has not finished its login holds
  one login PDU's buffer (login data segments are at most 8 KiB), not a session's
  receive buffer and command slot; those it reserves as its login ends. Unfinished
  logins may hold 1/32 of the arena together: past that, the oldest is closed to
  make room, so strangers that connect and send nothing cannot keep an initiator
  out, and none may take longer than `login_timeout`. Past `max_connections` the
  oldest unfinished login is closed too; only when every other connection is a
  session is a new one refused, logged once a minute per source.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from earmark.iscsi.discovery import Portal, discovery_answer
from earmark.iscsi.login import LOGIN_MAX_SEGMENT, TargetEntry
from earmark.iscsi.stream import receive_buffer_bytes
from earmark.iscsi.text import TextPairs
from earmark.memory import Arena
from earmark.memory.levels import TargetLevel
from earmark.target.counters import PortalCounters
from earmark.target.session import AdmissionPolicy, SessionConfig, TargetSession
from earmark.target.unit import LogicalUnit

#: Nominal size charged for a command slot: the task descriptor and its response header.
SLOT_BYTES = 256
#: What the target accepts per PDU (MaxRecvDataSegmentLength it declares).
RECV_SEGMENT = 65536
#: Whole largest PDUs a connection's receive buffer holds (256 KiB for two). A write's
#: immediate data is not placed (its command is not parsed yet), so with room for one
#: (128 KiB), 64 KiB writes at depth are read one PDU per read and answered one
#: status per writev; with two, a read takes up to three of them and their statuses
#: leave in one writev (measured: 0.38 reads and 0.6 writevs per command).
RECV_PDUS = 2
#: The one portal group this target has: login and SendTargets both name it.
PORTAL_GROUP_TAG = 1
#: TSIHs are 16 bits, and 0 on the wire means "a new session".
_TSIH_MAX = 0xFFFF
#: Unfinished logins may hold this share of the arena together (1/32): each also costs
#: the process about 9 KiB outside it (its objects, its socket), which RSS shows.
_LOGIN_SHARE = 32
#: A source refused for too many connections is logged at most this often (seconds).
_REFUSAL_LOG_INTERVAL = 60.0
#: Sources remembered for that before the quiet ones are forgotten.
_REFUSED_SOURCES = 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PortalLimits:
    """How long a login may take and how many connections there may be (None: sized
    from the arena: what unfinished logins may hold, plus every session it can hold)."""

    login_timeout: float = 15.0
    max_connections: int | None = None
    #: Sessions one initiator name may have at once (a reinstating login always may).
    sessions_per_initiator: int = 16


DEFAULT_LIMITS = PortalLimits()


@dataclass(slots=True)
class TargetSpec:
    """One target: what login checks (name, CHAP, ACL) and the LUNs it serves."""

    entry: TargetEntry
    units: dict[int, LogicalUnit]


@dataclass(frozen=True, slots=True)
class Start:
    """The login may become a session now."""


START = Start()


@dataclass(frozen=True, slots=True)
class WaitFor:
    """The login reinstates connection `old`'s session: end that connection, and start
    only once :meth:`TargetPortal.drained` names this one."""

    old: int


class TargetPortal:
    def __init__(
        self,
        targets: Sequence[TargetSpec],
        *,
        arena: Arena,
        config: SessionConfig,
        recv_bytes: int = receive_buffer_bytes(RECV_SEGMENT, pdus=RECV_PDUS),
        max_slots: int = 64,
        limits: PortalLimits = DEFAULT_LIMITS,
    ) -> None:
        self.set_targets(targets)
        self.arena = arena
        self.config = config
        self.max_slots = max_slots
        #: A connection's receive buffer, held for its life (`RECV_PDUS` of the largest).
        self.recv_bytes = recv_bytes
        #: One command slot: its descriptor and its data buffer.
        self.slot_claim: Mapping[int, int] = {
            TargetLevel.SLOT: SLOT_BYTES,
            TargetLevel.BUFFER: arena.cost(config.buffer_bytes),
        }
        reserve = config.policy is AdmissionPolicy.RESERVE
        #: The slot a connection brings to its session (`reserve`): a session can always
        #: take one command, and the login's window is that one command.
        self.first_slot: Mapping[int, int] | None = self.slot_claim if reserve else None
        #: What a connection holds once its login is done: the session's receive buffer
        #: and first slot.
        self.connection_claim: Mapping[int, int] = {
            TargetLevel.RECV: recv_bytes, **(self.first_slot or {}),
        }
        #: What a connection holds before it reads a byte, until its login is done.
        self.login_bytes = receive_buffer_bytes(LOGIN_MAX_SEGMENT, pdus=1)
        self.login_claim: Mapping[int, int] = {TargetLevel.RECV: self.login_bytes}
        self.login_timeout = limits.login_timeout
        self.sessions_per_initiator = limits.sessions_per_initiator
        self.max_logins = max(1, arena.capacity // _LOGIN_SHARE // arena.cost(self.login_bytes))
        self.max_connections = limits.max_connections or (
            self.max_logins + arena.capacity // sum(self.connection_claim.values()))
        #: The login window: commands the initiator may send right after login.
        self.login_window = 1 if reserve else config.window
        self.login_wants: Mapping[str, str] = {
            "MaxRecvDataSegmentLength": str(RECV_SEGMENT),
            "MaxBurstLength": str(config.buffer_bytes),
            "FirstBurstLength": str(min(65536, config.buffer_bytes)),
            "InitialR2T": "No",
        }
        #: Where the target listens, for SendTargets; the runtime says once it knows.
        self.network_portals: list[Portal] = []
        self.counters = PortalCounters()
        self._ids = itertools.count(1)
        self._connections: set[int] = set()
        #: Connections still logging in, oldest first: True once one was answered.
        self._logins: dict[int, bool] = {}
        #: When each source refused for too many connections was last logged, and how
        #: many refusals since.
        self._refused: dict[str, tuple[float, int]] = {}
        self._sessions: dict[int, TargetSession] = {}
        self._tsih = 0
        self._tsihs: dict[int, int] = {}
        # The last connection of each I_T nexus (initiator name, ISID): a new login of
        # the same nexus reinstates its session. An entry goes once it has drained.
        self._nexus: dict[tuple[str, int], int] = {}
        # A login waiting for the connection whose session it reinstates, until that
        # one has drained (it counts as drained only after its own predecessor).
        self._waits_for: dict[int, int] = {}
        # Connections gone with their I/O done, but whose predecessor has not drained.
        self._gone: set[int] = set()

    def set_targets(self, targets: Sequence[TargetSpec]) -> None:
        """What logins from now on find (a reload): sessions keep the units they have."""
        self.targets = {t.entry.iqn: t for t in targets}
        self.entries: Mapping[str, TargetEntry] = {
            iqn: t.entry for iqn, t in self.targets.items()}

    def listening(self, address: str, port: int) -> None:
        self.network_portals = [Portal(address, port, PORTAL_GROUP_TAG)]

    def units_of(self, iqn: str) -> dict[int, LogicalUnit]:
        spec = self.targets.get(iqn)
        return dict(spec.units) if spec is not None else {}

    def text_answer(self, initiator: str, target: str | None) -> Callable[[TextPairs], bytes]:
        """SendTargets for a session of `initiator` (on `target`; None: discovery)."""
        return discovery_answer(self.entries, self.network_portals, initiator_name=initiator,
                                session_target=target)

    # ------------------------------------------------------------ connections

    def connection_opened(self) -> int:
        conn_id = next(self._ids)
        self._connections.add(conn_id)
        return conn_id

    def login_started(self, conn_id: int, source: str, now: float) -> list[int] | None:
        """A connection from `source` begins its login: the unfinished logins to close
        first, so that theirs stay within their share of the arena and the connections
        within `max_connections`: the oldest of those that have not yet said anything
        the target could answer, then the oldest of the rest. None: refuse it, every
        other connection is a session."""
        logins = self._logins
        over = len(self._connections) - self.max_connections
        if over > len(logins):
            last, count = self._refused.get(source, (-_REFUSAL_LOG_INTERVAL, 0))
            if len(self._refused) > _REFUSED_SOURCES:  # forget the quiet ones
                self._refused = {k: v for k, v in self._refused.items()
                                 if now - v[0] < _REFUSAL_LOG_INTERVAL}
            if now - last >= _REFUSAL_LOG_INTERVAL:
                log.warning("refusing connections from %s: %d connections are open, the "
                            "most allowed (--max-connections)%s", source,
                            len(self._connections) - 1,
                            f"; {count} more refused since" if count else "")
                self._refused[source] = (now, 0)
            else:
                self._refused[source] = (last, count + 1)
            self._connections.discard(conn_id)  # as good as gone: it closes at once
            return None
        logins[conn_id] = False
        count = max(0, len(logins) - self.max_logins, over)
        if not count:
            return []
        # Silent ones first: a flood of connections arriving behind a real initiator's
        # login must not close it, only those of the flood that are still mute (this one
        # last: it has had no time to speak).
        silent = [old for old, answered in logins.items() if not answered and old != conn_id]
        answered = [old for old, spoke in logins.items() if spoke]
        evict = [*silent, *answered, conn_id][:count]
        for old in evict:
            del logins[old]
            self._connections.discard(old)
        return evict

    def login_answered(self, conn_id: int) -> None:
        """The connection sent a login PDU the target answered (it speaks iSCSI): it is
        closed for room only after every silent one."""
        if conn_id in self._logins:
            self._logins[conn_id] = True

    def login_finished(self, conn_id: int) -> None:
        """The connection's login is over: it holds a session's memory now, not a login's."""
        self._logins.pop(conn_id, None)

    def connection_closed(self, conn_id: int) -> bool:
        """The connection is gone (its I/O may still run); True: the shares changed."""
        self._logins.pop(conn_id, None)
        self._tsihs.pop(conn_id, None)
        changed = self._sessions.pop(conn_id, None) is not None and self._share()
        self._connections.discard(conn_id)
        return changed

    def allocate_tsih(self, conn_id: int) -> int:
        """The next TSIH, wrapping at 16 bits, never 0 nor one a live session holds."""
        taken = set(self._tsihs.values())
        for _ in range(_TSIH_MAX):
            self._tsih = self._tsih % _TSIH_MAX + 1
            if self._tsih not in taken:
                break
        self._tsihs[conn_id] = self._tsih
        return self._tsih

    # ---------------------------------------------------------- reinstatement

    def admits(self, initiator: str, isid: int) -> bool:
        """May `initiator` log in one more session (a nexus it has already is no more)?"""
        if (initiator, isid) in self._nexus:
            return True
        held = sum(1 for name, _ in self._nexus if name == initiator)
        return held < self.sessions_per_initiator

    def login_done(self, conn_id: int, initiator: str, isid: int) -> Start | WaitFor:
        """A login of a normal session succeeded: may it start, or whom must it outlive?"""
        key = (initiator, isid)
        old = self._nexus.get(key)
        self._nexus[key] = conn_id
        if old is None or old == conn_id:
            return START
        self._waits_for[conn_id] = old
        self.counters.reinstatements += 1
        return WaitFor(old)

    def drained(self, conn_id: int) -> list[int]:
        """The connection is gone and none of its I/O still runs: the waiting logins
        that may start now."""
        if conn_id in self._waits_for:
            self._gone.add(conn_id)
            return []
        ready: list[int] = []
        self._release(conn_id, ready)
        return ready

    def _release(self, conn_id: int, ready: list[int]) -> None:
        for key in [k for k, c in self._nexus.items() if c == conn_id]:
            del self._nexus[key]
        for waiter in [w for w, old in self._waits_for.items() if old == conn_id]:
            del self._waits_for[waiter]
            if waiter in self._gone:
                self._gone.discard(waiter)
                self._release(waiter, ready)
            else:
                ready.append(waiter)

    # ------------------------------------------------------------ fair shares

    def session_started(self, conn_id: int, session: TargetSession) -> bool:
        """True: the shares changed (every session may want more slots now)."""
        self._sessions[conn_id] = session
        return self._share()

    def fair_share(self) -> int:
        """Slots per session. Credit once advertised (MaxCmdSN) stays with an idle
        session, so the shares leave room for one more connection's receive buffer and
        first slot: otherwise an idle session could keep every newcomer waiting forever."""
        per_slot = sum(self.slot_claim.values())
        logins = len(self._logins)
        room = (self.arena.capacity - logins * self.login_bytes
                - (len(self._connections) - logins + 1) * self.recv_bytes)
        sessions = len(self._sessions) + 1
        return max(1, min(self.max_slots, room // per_slot // sessions))

    def _share(self) -> bool:
        if self.config.policy is not AdmissionPolicy.RESERVE or not self._sessions:
            return False
        share = self.fair_share()
        for session in self._sessions.values():
            session.slot_target = share
        return True
