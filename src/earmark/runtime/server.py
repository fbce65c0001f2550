"""The target's listener on asyncio: connections, fair shares of slots, the deadlock watch.

Everything protocol-shaped happens in the sans-I/O session; this module owns the
sockets, the thread pool for backing I/O, and two policies of the runtime:

* Fair share. A session keeps the slots it was granted (no re-reserving per
  command), so without a limit the first sessions would hold the arena and the
  rest would wait forever for their first slot. Each session's `slot_target` is
  its share of what the arena can hold, counting one session more than there
  is (room for the next to log in); a session above it hands slots back as its
  commands finish.
* Deadlock watch. When memory waiters exist and nothing has been granted or
  returned for a while, the detector is asked; a deadlock (only `--policy none`
  can produce one) is logged in words and the connections are dropped, so
  initiators see an error instead of a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from earmark.iscsi.discovery import Portal
from earmark.iscsi.login import TargetEntry
from earmark.iscsi.stream import receive_buffer_bytes
from earmark.memory import Arena, DeadlockReport, Watchdog, find_deadlock
from earmark.memory.levels import TargetLevel
from earmark.runtime.connection import TargetConnection
from earmark.target.lun import LogicalUnit
from earmark.target.session import DEFAULT_CONFIG, Policy, SessionConfig

log = logging.getLogger(__name__)

#: Nominal size charged for a command slot: the task descriptor and its response header.
SLOT_BYTES = 256
#: What the target accepts per PDU (MaxRecvDataSegmentLength it declares).
RECV_SEGMENT = 65536


@dataclass(slots=True)
class TargetSpec:
    """One target: what login checks (name, CHAP, ACL) and the LUNs it serves."""

    entry: TargetEntry
    units: dict[int, LogicalUnit]


class TargetServer:
    def __init__(
        self,
        targets: Sequence[TargetSpec],
        *,
        arena: Arena,
        config: SessionConfig = DEFAULT_CONFIG,
        address: str = "127.0.0.1",
        port: int = 3260,
        max_slots: int = 64,
        io_threads: int = 8,
        watchdog_s: float = 2.0,
        on_deadlock: Callable[[DeadlockReport], None] | None = None,
    ) -> None:
        self.targets = {t.entry.iqn: t for t in targets}
        self.login_targets: Mapping[str, TargetEntry] = {
            iqn: t.entry for iqn, t in self.targets.items()
        }
        self.arena = arena
        self.config = config
        self.address = address
        self.port = port
        self.max_slots = max_slots
        self.recv_bytes = receive_buffer_bytes(RECV_SEGMENT, pdus=1)
        self.slot_claims: dict[int, int] = {
            TargetLevel.SLOT: SLOT_BYTES,
            TargetLevel.BUFFER: arena.cost(config.buffer_bytes),
        }
        self.login_wants = {
            "MaxRecvDataSegmentLength": str(RECV_SEGMENT),
            "MaxBurstLength": str(config.buffer_bytes),
            "FirstBurstLength": str(min(65536, config.buffer_bytes)),
            "InitialR2T": "No",
        }
        self.pool = ThreadPoolExecutor(io_threads, thread_name_prefix="earmark-io")
        self.deadlock: DeadlockReport | None = None
        self._on_deadlock = on_deadlock
        self._watchdog = Watchdog(watchdog_s)
        self._connections: set[TargetConnection] = set()
        self._sessions: set[TargetConnection] = set()
        # The last connection of each I_T nexus (initiator name, ISID): a new login of
        # the same nexus reinstates its session.
        self._nexus: dict[tuple[str, int], TargetConnection] = {}
        self._names = itertools.count(1)
        self._tsih = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "server not started"
        return self._loop

    @property
    def portals(self) -> list[Portal]:
        return [Portal(self.address, self.port, 1)]

    def units_of(self, iqn: str) -> dict[int, LogicalUnit]:
        spec = self.targets.get(iqn)
        return dict(spec.units) if spec is not None else {}

    def allocate_tsih(self) -> int:
        return next(self._tsih) % 0xFFFF or next(self._tsih)

    async def start(self) -> None:
        """Listen; raises OSError (e.g. address in use) as the socket layer reports it."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            self._new_connection, self.address, self.port, reuse_address=True
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        self._watch = asyncio.ensure_future(self._watch_memory())

    def _new_connection(self) -> TargetConnection:
        conn = TargetConnection(self, f"conn-{next(self._names)}")
        self._connections.add(conn)
        return conn

    # ---------------------------------------------------------- fair shares

    def session_started(self, conn: TargetConnection) -> None:
        self._sessions.add(conn)
        self._share()

    def nexus_started(self, initiator: str, isid: int, conn: TargetConnection) -> None:
        self._nexus[(initiator, isid)] = conn

    def nexus_ended(self, conn: TargetConnection) -> None:
        """``conn`` is gone and its I/O done: a later login of its nexus need not wait."""
        for key in [k for k, c in self._nexus.items() if c is conn]:
            del self._nexus[key]

    def predecessor(self, initiator: str, isid: int,
                    conn: TargetConnection) -> TargetConnection | None:
        """The connection whose session a login of this nexus reinstates, unless it is
        gone and none of its I/O still runs."""
        old = self._nexus.get((initiator, isid))
        return None if old is None or old is conn or old.drained.is_set() else old

    def session_ended(self, conn: TargetConnection) -> None:
        self._sessions.discard(conn)
        self._share()

    def connection_closed(self, conn: TargetConnection) -> None:
        self._connections.discard(conn)

    def _share(self) -> None:
        if self.config.policy is not Policy.RESERVE or not self._sessions:
            return
        per_slot = sum(self.slot_claims.values())
        # Credit once advertised (MaxCmdSN) stays with an idle session, so the shares
        # leave room for one more connection's receive buffer and first slot:
        # otherwise an idle session could keep every newcomer waiting forever.
        room = self.arena.capacity - (len(self._connections) + 1) * self.recv_bytes
        sessions = len(self._sessions) + 1
        share = max(1, min(self.max_slots, room // per_slot // sessions))
        for conn in self._sessions:
            if conn.session is not None:
                conn.session.slot_target = share
                conn.kick()

    # ------------------------------------------------------- deadlock watch

    async def _watch_memory(self) -> None:
        while True:
            await asyncio.sleep(min(0.5, self._watchdog.timeout / 2))
            if not self._watchdog.stalled(self.loop.time(), self.arena.progress,
                                          self.arena.waiting):
                continue
            report = find_deadlock(self.arena)
            if report is None:
                continue
            self.deadlock = report
            log.error("%s", report)
            for line in report.stuck:
                log.error("  %s", line)
            if self._on_deadlock is not None:
                self._on_deadlock(report)
            for conn in list(self._connections):
                conn.abort("deadlock: dropping the connection so the initiator sees an error")

    # ------------------------------------------------------------- stopping

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight commands finish (up to `grace` s), sync, close."""
        if self._server is not None:
            self._server.close()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        busy = [c.idle.wait() for c in self._connections if c.busy()]
        if busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*busy), grace)
        for conn in list(self._connections):
            conn.abort("target stopping")
        await asyncio.sleep(0)
        loop = self.loop
        for spec in self.targets.values():
            for unit in spec.units.values():
                await loop.run_in_executor(self.pool, unit.backing.sync)
        self.pool.shutdown(wait=True)
        if self._server is not None:
            await self._server.wait_closed()
