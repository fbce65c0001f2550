"""One target connection on asyncio: login, then the full-feature session, on one reader.

A `BufferedProtocol` reads into the connection's receive buffer (a RECV reservation
held for the connection's life) as many PDUs as the socket has, and the framer
(`earmark.iscsi.stream`) parses them in a batch. A Data-Out's data segment is read
straight into the command's reserved buffer: the framer asks `session.placement`
for the views once the BHS is in and hands them to the transport. Replies go out
with one `writelines` per batch; backing I/O runs on the server's thread pool, but for
the small reads and writes the loop does itself (`earmark.target.loop_io`). No
task per PDU: the only tasks are the connection's admission (reserving more command
slots) and, under `--policy none`, allocations.

Ordering contract with the session: everything `data_to_send` returns is written
before the next event starts, and what the transport cannot send at once it keeps as a
copy (`loops.sender`), because Data-In may point into a buffer the next event reuses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import cast

from earmark.iscsi.errors import ProtocolError
from earmark.iscsi.login import LOGIN_MAX_SEGMENT
from earmark.iscsi.pdu import BHS_LENGTH, Pdu, WireBytes
from earmark.iscsi.stream import Framer
from earmark.memory import Reservation
from earmark.memory.levels import TargetLevel
from earmark.runtime import loops
from earmark.runtime.busy_poller import BusyPoller
from earmark.target import connection_core as core
from earmark.target.events import AllocRequest, CloseConnection, IoRequest
from earmark.target.executor import run_io
from earmark.target.login_phase import LoginPhase, Refused
from earmark.target.loop_io import run_on_loop
from earmark.target.portal import Start, TargetPortal, WaitFor
from earmark.target.session import UNSENT_HIGH, TargetSession

log = logging.getLogger(__name__)


class TargetConnection(asyncio.BufferedProtocol):
    """`peers` is every live connection by id (this one too, until it is lost): the
    portal names the ones a login ends or lets start, and whose shares changed."""

    def __init__(self, portal: TargetPortal, conn_id: int, peers: dict[int, TargetConnection],
                 loop: asyncio.AbstractEventLoop, pool: Executor,
                 poller: BusyPoller | None = None) -> None:
        self._portal = portal
        self._poller = poller
        self.conn_id = conn_id
        self._peers = peers
        self._loop = loop
        self._pool = pool
        self._stopwatch = loops.stopwatch(loop)
        self.name = f"conn-{conn_id}"
        self.transport: asyncio.Transport | None = None
        self._send: Callable[[Sequence[bytes | memoryview]], None] = lambda pieces: None
        #: The loop's clock, looked up once: every PDU received is timed with it.
        self._clock: Callable[[], float] = loop.time
        self.session: TargetSession | None = None
        self._login = LoginPhase(portal, conn_id)
        self._memory = core.ConnectionMemory(portal, self.name)
        #: Parses what arrives in the receive buffer, once that is held.
        self._framer: Framer | None = None
        #: Bytes read before the receive buffer is held (uvloop reads once even though
        #: connection_made paused): at most one header's worth, moved into it once it is.
        self._early = bytearray(BHS_LENGTH)
        self._early_n = 0
        self._admission: asyncio.Task[None] | None = None
        self._allocs: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._login_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._setup: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        # Backing I/O running on the pool, and the session it belongs to even after
        # the connection is gone: its buffers come back only when the I/O returns, and
        # a session that replaces this one must not start before then.
        self._io_running = 0
        self._ended: TargetSession | None = None
        # The transport holds more unsent bytes than its high-water mark (the initiator
        # reads slower than we answer): no new command is read until it drains.
        self._write_paused = False

    # -------------------------------------------------------------- lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's is not an asyncio.Transport subclass, so no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        # Bytes waiting in the transport are outside the arena: bounded by these marks
        # plus what the commands already admitted still send (pause_writing).
        transport.set_write_buffer_limits(high=UNSENT_HIGH, low=UNSENT_HIGH // 4)
        transport.pause_reading()
        self._send = loops.sender(transport)
        portal = self._portal
        peer = transport.get_extra_info("peername")
        evict = portal.login_started(self.conn_id, str(peer[0] if peer else "?"),
                                     self._loop.time())
        if evict is None:  # too many connections (the portal logs it, a line a minute)
            self._close()
            return
        for old in evict:
            if (conn := self._peers.get(old)) is not None:
                conn._close("its login did not finish before newer ones needed the room")
        self._login_timer = self._loop.call_later(portal.login_timeout, self._login_expired)
        self._setup = asyncio.ensure_future(self._reserve(portal.login_claim, None))

    async def _reserve(self, claim: Mapping[int, int], final: list[WireBytes] | None) -> None:
        """Hold what the login needs before reading a byte (`final` None), or what the
        session needs before the login's `final` response goes out."""
        try:
            res = await self._portal.arena.reserve(claim, owner=f"{self.name}/admit")
        except Exception as exc:  # ClaimTooLargeError: the arena cannot hold one connection
            log.error("%s: refused: %s", self.name, exc)
            self._close()
            return
        if self._closing:
            res.release()
            return
        memory = self._memory
        recv = memory.login_claimed(res) if final is None else memory.claimed(res)
        if recv is None:
            log.error("%s: refused: the arena is too fragmented for a receive buffer", self.name)
            self._close()
            return
        if final is None:
            self._framer = self._new_framer(recv.view)
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
                if self._early_n:
                    self._guarded(self._parse)
            return
        assert self._framer is not None
        self._framer.move_to(recv.view)
        memory.login_over()
        self._portal.login_finished(self.conn_id)
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        self._write(final)
        self._guarded(self._start_session)
        self._resume()

    def _login_expired(self) -> None:
        self._login_timer = None
        if self.session is None and not self._closing:
            self._close(f"login not finished within {self._portal.login_timeout:g} s")

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._setup is not None:
            self._setup.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._login_timer is not None:
            self._login_timer.cancel()
        if self._admission is not None:
            self._admission.cancel()
        for task in self._allocs:
            task.cancel()
        slots: list[Reservation] = []
        if self.session is not None:
            slots = self.session.close()
            self._ended, self.session = self.session, None
            self._memory.session = None
        self._memory.release(slots)
        self._peers.pop(self.conn_id, None)
        if self._portal.connection_closed(self.conn_id):
            self._kick_all()
        self.idle.set()
        if not self._io_running:
            self._drained()

    def _close(self, reason: str = "", error: bool = False) -> None:
        if reason:
            (log.warning if error else log.info)("%s: closing: %s", self.name, reason)
        self._closing = True
        if self._framer is not None:
            self._framer.stop()
        if self.transport is not None:
            self.transport.close()

    # -------------------------------------------------------------- receiving

    def get_buffer(self, sizehint: int) -> memoryview:
        framer = self._framer
        if framer is None:
            return memoryview(self._early)[self._early_n :]
        return framer.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        framer = self._framer
        if framer is None:
            # Not in get_buffer: uvloop must not stop reading inside its alloc callback.
            self._early_n += nbytes
            if self.transport is not None:
                self.transport.pause_reading()
            return
        try:
            if framer.received(nbytes):
                self._pump()
        except Exception as exc:
            self._broken(exc)

    def _new_framer(self, buffer: memoryview) -> Framer:
        """The framer over the receive buffer just held, holding what arrived before it
        (parsed once the login is there to take it)."""
        framer = Framer(buffer, self._received, self._pdu_error,
                        max_data_segment=LOGIN_MAX_SEGMENT)
        framer.pause()
        framer.feed(memoryview(self._early)[: self._early_n])
        framer.resume()
        return framer

    def _parse(self) -> None:
        """Parse what the receive buffer holds (nothing new arrived)."""
        if self._framer is not None:
            self._framer.received(0)

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run `step` and send what it produced."""
        try:
            step()
            self._pump()
        except Exception as exc:
            self._broken(exc)

    def _broken(self, exc: Exception) -> None:
        """Whatever goes wrong ends only this connection, with a log line, never the server."""
        if isinstance(exc, ProtocolError):
            self._fatal(exc.reason)
        else:
            log.error("%s: internal error; closing the connection", self.name, exc_info=exc)
            self._close()

    def eof_received(self) -> bool | None:
        return False

    def _received(self, pdu: Pdu, placed: bool) -> None:
        session = self.session
        if session is None:
            self._login_pdu(pdu)
            return
        session.receive(pdu, self._clock(), placed=placed)
        if session.blocked is not None:  # its unsolicited data waits for a buffer
            self._stop_reading()

    def _pdu_error(self, header: memoryview, exc: ProtocolError) -> None:
        framer = self._framer
        if core.bad_pdu_closes(self.session, header, exc,
                               out_of_sync=framer is not None and framer.error is exc):
            self._fatal(exc.reason)
        else:
            log.info("%s: rejecting a PDU: %s", self.name, exc.reason)

    def pause_writing(self) -> None:
        """The initiator reads slower than we answer: stop reading commands, and hold the
        answers of reads, so the bytes queued for it (outside the arena) stop growing."""
        self._write_paused = True
        if self.session is not None:
            self.session.data_in_room = 0
        self._stop_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._guarded(self._pump)  # the answers held meanwhile go, as the room allows
        if not self._closing:
            self._resume()

    def _stop_reading(self) -> None:
        if self._framer is not None:
            self._framer.pause()
        if self.transport is not None:
            self.transport.pause_reading()

    def _fatal(self, reason: str) -> None:
        # The log line first: the peer may act on the Reject sent below before a line
        # logged after it is written.
        log.warning("%s: closing: %s", self.name, reason)
        self._pump()
        self._close()

    # ------------------------------------------------------------------ login

    def _login_pdu(self, pdu: Pdu) -> None:
        pieces, step = self._login.receive(pdu)
        if type(step) is Start:
            self._enter_full_feature(pieces)
            return
        self._write(pieces)
        if type(step) is WaitFor:
            log.info("%s: waiting for conn-%d's I/O to finish before the session is "
                     "reinstated", self.name, step.old)
            old = self._peers.get(step.old)
            if old is not None:
                old.abort("its session is reinstated by a new login")
        elif type(step) is Refused:
            self._close(f"login refused: {step.reason}", error=True)

    def reinstate(self) -> None:
        """The sessions this login reinstates are over: it may start now."""
        held = self._login.reinstated()
        if held and not self._closing:
            self._enter_full_feature(held)

    def _enter_full_feature(self, final: list[WireBytes]) -> None:
        """Read nothing more until the session's memory is held; then answer the login."""
        self._stop_reading()
        self._setup = asyncio.ensure_future(
            self._reserve(self._portal.connection_claim, final))

    def _start_session(self) -> None:
        self.session, shares_changed = self._login.start(
            self._memory.session_slots(), name=self.name, now=self._loop.time(),
            framer=self._framer)
        self._memory.session = self.session
        log.info("%s: %s", self.name, self._login.what)
        if shares_changed:
            self._kick_all()

    # ---------------------------------------------------------------- sending

    def _write(self, pieces: list[bytes | memoryview]) -> None:
        if pieces and self.transport is not None and not self.transport.is_closing():
            self._send(pieces)

    def _pump(self) -> None:
        """Send what the session queued, then start what it asked for; when its answers
        have used their room and the transport has not paused, renew it (and go on)."""
        session = self.session
        if session is None:
            return
        self._write(session.data_to_send())
        # Looked up once per batch: the loop below runs once per command.
        next_event, io_done, stopwatch = session.next_event, session.io_done, self._stopwatch
        while True:
            while (event := next_event()) is not None:
                if isinstance(event, IoRequest):
                    if run_on_loop(event, stopwatch):
                        io_done(event, b"")
                    else:
                        self._io_running += 1
                        fut = self._loop.run_in_executor(self._pool, run_io, event)
                        fut.add_done_callback(self._io_callback(event))
                elif isinstance(event, AllocRequest):
                    task = asyncio.ensure_future(self._allocate(event))
                    self._allocs.add(task)
                    task.add_done_callback(self._allocs.discard)
                elif isinstance(event, CloseConnection):
                    self._write(session.data_to_send())
                    self._close(event.reason, event.error)
            self._write(session.data_to_send())
            if session.data_in_room > 0 or self._write_paused or not (t := self.transport):
                break
            session.release_data_in(t.get_write_buffer_size())
        self._rearm_timer()
        if session.slot_demand() and self._admission is None and not self._closing:
            self._admission = asyncio.ensure_future(self._admit())
        if session.tasks:
            self.idle.clear()
        else:
            self.idle.set()
        if self._poller is not None:  # commands came or answers left: the next may be near
            self._poller.woke()

    def _io_callback(self, io: IoRequest) -> Callable[[asyncio.Future[bytes]], None]:
        def done(fut: asyncio.Future[bytes]) -> None:
            self._io_running -= 1
            session = self.session
            if session is None:  # the connection is gone: the I/O's buffers come back now
                ended = self._ended
                if ended is not None:
                    ended.io_done(io, b"")
                if not self._io_running:
                    self._drained()
                return
            sense = core.io_sense(self.name, fut)
            self._guarded(lambda: session.io_done(io, sense))
            self._resume()

        return done

    def _resume(self) -> None:
        framer, session = self._framer, self.session
        if framer is None or self.transport is None or self._closing or not core.may_read(
                session, self._write_paused):
            return
        if framer.paused:  # what it stopped for is over: take what is buffered
            framer.resume()
            self._guarded(self._parse)
        if session is not None and not framer.paused and not self._closing:
            self.transport.resume_reading()

    async def _allocate(self, req: AllocRequest) -> None:
        """`--policy none`: plain allocation on demand, which may wait for memory; once
        granted, the buffer is held by the connection's commands as a group."""
        buf = await self._portal.arena.allocate(TargetLevel.BUFFER, req.nbytes,
                                                owner=core.alloc_waiter(self.name, req))
        buf.handoff(f"{self.name}/cmds")
        session = self.session
        if session is None or self._closing:
            buf.free()
            return
        session.allocated(req, buf)
        self._pump()
        if req.blocking:
            self._resume()

    async def _admit(self) -> None:
        """Reserve command slots while the session wants more: its window grows."""
        portal = self._portal
        try:
            while (session := self.session) is not None and session.slot_demand():
                res = await portal.arena.reserve(portal.slot_claim, owner=f"{self.name}/admit")
                if self._closing or self.session is None:
                    res.release()
                    return
                res.handoff(f"{self.name}/slots")
                session.add_slot(res)
        finally:
            self._admission = None

    def _rearm_timer(self) -> None:
        session = self.session
        if session is None:
            return
        timer = self._timer
        armed = timer.when() if timer is not None else None
        when = session.timer_for(armed)
        if when == armed:
            return
        if timer is not None:
            timer.cancel()
            self._timer = None
        if when is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.session is not None and not self._closing:
            self.session.handle_timer(self._loop.time())
            self._pump()

    # ----------------------------------------------------------------- stopping

    def _drained(self) -> None:
        """Gone, and none of its I/O still runs: logins waiting for it may start."""
        for conn_id in self._portal.drained(self.conn_id):
            waiting = self._peers.get(conn_id)
            if waiting is not None:
                waiting.reinstate()
        # No cycle through it left (framer callbacks, tasks): refcounting frees it now, not
        # the cyclic collector after thousands more (their arenas stay resident after them).
        self._framer = self._ended = self._setup = None

    def _kick_all(self) -> None:
        for conn in list(self._peers.values()):
            conn.kick()

    def kick(self) -> None:
        """The session's share of slots changed: start admission if it wants more."""
        if not self._closing:
            self._pump()

    def busy(self) -> bool:
        return self.session is not None and bool(self.session.tasks)

    def abort(self, reason: str) -> None:
        self._close(reason, error=True)

