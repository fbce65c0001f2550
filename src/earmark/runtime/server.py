"""The target's listener on asyncio: connections, the thread pool, the deadlock watch.

Everything protocol-shaped happens in the sans-I/O session and portal, and when to
ask the deadlock detector in `earmark.target.watch`; this module owns the sockets,
the thread pool for backing I/O, and the watch's clock: it logs a deadlock the
watch names in words and drops the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from earmark.memory import DeadlockReport
from earmark.runtime.busy_poller import BusyPoller
from earmark.runtime.connection import TargetConnection
from earmark.target.build import TargetSetup
from earmark.target.portal import TargetPortal
from earmark.target.watch import DeadlockWatch

log = logging.getLogger(__name__)


class TargetServer:
    def __init__(
        self,
        setup: TargetSetup,
        *,
        io_threads: int = 8,
        watchdog_s: float = 2.0,
        poll_s: float = 0.0,
        on_deadlock: Callable[[DeadlockReport], None] | None = None,
    ) -> None:
        self.portal = TargetPortal(setup.targets, arena=setup.arena, config=setup.config,
                                   limits=setup.limits)
        self.arena = setup.arena
        self.address = setup.address
        self.port = setup.port
        self.pool = ThreadPoolExecutor(io_threads, thread_name_prefix="earmark-io")
        self._on_deadlock = on_deadlock
        self._deadlocks = DeadlockWatch(self.arena, watchdog_s)
        self.connections: dict[int, TargetConnection] = {}
        self._server: asyncio.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Seconds the loop polls after each command and answer (``--poll``); 0: it sleeps.
        self.poll_s = poll_s
        self._poller: BusyPoller | None = None

    @property
    def deadlock(self) -> DeadlockReport | None:
        return self._deadlocks.report

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "server not started"
        return self._loop

    async def start(self) -> None:
        """Listen; raises OSError (e.g. address in use) as the socket layer reports it."""
        self._loop = asyncio.get_running_loop()
        if self.poll_s:
            self._poller = BusyPoller(self._loop, self.poll_s)
        self._server = await self.listen(self.address, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.portal.listening(self.address, self.port)
        self._watch = asyncio.ensure_future(self._watch_memory())

    async def listen(self, address: str, port: int) -> asyncio.Server:
        """A listener on `address`:`port` (0: any free port) whose connections are this
        server's; raises OSError as binding does."""
        # The kernel's longest accept queue (asyncio's 100 is full under a flood, and a
        # real initiator's SYN dropped there waits a second to be sent again).
        return await self.loop.create_server(self.new_connection, address, port,
                                             reuse_address=True, backlog=socket.SOMAXCONN)

    def new_connection(self) -> TargetConnection:
        conn_id = self.portal.connection_opened()
        conn = TargetConnection(self.portal, conn_id, self.connections, self.loop, self.pool,
                                self._poller)
        self.connections[conn_id] = conn
        return conn

    # ------------------------------------------------------- deadlock watch

    async def _watch_memory(self) -> None:
        watch = self._deadlocks
        while True:
            await asyncio.sleep(watch.interval)
            report = watch.check(self.loop.time())
            if report is None:
                continue
            log.error("%s", report)
            for line in report.stuck:
                log.error("  %s", line)
            if self._on_deadlock is not None:
                self._on_deadlock(report)
            for conn in list(self.connections.values()):
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
        busy = [c.idle.wait() for c in self.connections.values() if c.busy()]
        if busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*busy), grace)
        for conn in list(self.connections.values()):
            conn.abort("target stopping")
        await asyncio.sleep(0)
        loop = self.loop
        for spec in self.portal.targets.values():
            for unit in spec.units.values():
                await loop.run_in_executor(self.pool, unit.backing.sync)
        self.pool.shutdown(wait=True)
        if self._server is not None:
            await self._server.wait_closed()
