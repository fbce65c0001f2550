"""One target connection on asyncio: login, then the full-feature session, on one reader.

A `BufferedProtocol` reads into the connection's receive buffer (a RECV reservation
held for the connection's life) as many PDUs as the socket has, and parses them
in a batch. A Data-Out's data segment is read straight into the command's
reserved buffer: once the BHS is in, `session.placement` names the views, what
already arrived is moved there and the rest of the segment is received into them
directly. Replies go out with one `writelines` per batch; backing I/O runs on the
server's thread pool. No task per PDU: the only tasks are the connection's
admission (reserving more command slots) and, under `--policy none`, allocations.

Ordering contract with the session: everything `data_to_send` returns is written
(`writelines` copies what it cannot send at once) before the next event starts,
because Data-In may point into a buffer the next event reuses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from crc32c import crc32c

from earmark.iscsi.digest import DIGEST_LENGTH, header_digest, padding
from earmark.iscsi.discovery import TextResponder, discovery_answer
from earmark.iscsi.errors import DigestError, ProtocolError
from earmark.iscsi.framing import serialize
from earmark.iscsi.login import LOGIN_MAX_SEGMENT, TargetLogin
from earmark.iscsi.opcodes import RejectReason
from earmark.iscsi.pdu import BHS_LENGTH, LoginRequest, bhs_lengths, decode_pdu
from earmark.memory import Buffer, Reservation
from earmark.memory.levels import TargetLevel
from earmark.scsi.plans import ReadPlan
from earmark.scsi.reservations import Nexus
from earmark.scsi.sense import ScsiError, SenseKey
from earmark.target.backing import BackingError
from earmark.target.events import AllocRequest, CloseConnection, IoRequest
from earmark.target.executor import run_io
from earmark.target.session import Policy, TargetSession

if TYPE_CHECKING:
    from earmark.runtime.server import TargetServer

log = logging.getLogger(__name__)

#: Largest read done on the loop thread when cached (`_read_inline`); larger reads copy
#: long enough that a pool thread, running beside the loop, is worth its round trip.
INLINE_READ_BYTES = 64 * 1024
#: Largest AHS a BHS can announce (TotalAHSLength is one byte of 4-byte words).
_MAX_AHS = 255 * 4


_UNSENT_HIGH = 1 << 20
"""Unsent bytes a connection's transport may hold before it stops reading commands."""


def recv_buffer_bytes(mrdsl: int) -> int:
    """The RECV reservation of one connection: the largest PDU we accept, rounded up
    to a power of two so the arena hands it out as one run."""
    need = BHS_LENGTH + _MAX_AHS + 2 * DIGEST_LENGTH + mrdsl + 3
    return 1 << (need - 1).bit_length()


class TargetConnection(asyncio.BufferedProtocol):
    def __init__(self, server: TargetServer, name: str) -> None:
        self.server = server
        self.name = name
        self.transport: asyncio.Transport | None = None
        #: The loop's clock, looked up once: every PDU received is timed with it.
        self._clock: Callable[[], float] = server.loop.time
        self.session: TargetSession | None = None
        self._login: TargetLogin | None = None
        self._reservation: Reservation | None = None
        self._recv: Buffer | None = None
        self._rb = memoryview(bytearray(0))
        self._pos = 0
        self._end = 0
        #: Bytes read before the receive buffer is held (uvloop reads once even though
        #: connection_made paused): at most one header's worth, moved into it once it is.
        self._early = bytearray(BHS_LENGTH)
        self._early_n = 0
        #: Data segment views being received into directly, and how the PDU ends.
        self._into: list[memoryview] = []
        self._placed: list[memoryview] | None = None
        self._header_digest = False
        self._data_digest = False
        self._limit = LOGIN_MAX_SEGMENT
        self._stat_sn = 0
        self._first_slot: Reservation | None = None
        self._admission: asyncio.Task[None] | None = None
        self._allocs: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._setup: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        # Backing I/O running on the pool, and the session it belongs to even after
        # the connection is gone: its buffers come back only when the I/O returns, and
        # a session that replaces this one must not start before then.
        self._io_running = 0
        self._ended: TargetSession | None = None
        #: Set once the connection is gone and no I/O of its session still runs.
        self.drained = asyncio.Event()
        self._login_wait: asyncio.Task[None] | None = None
        # The connection whose session this login reinstates, while it drains: this one
        # counts as drained only after it (a later login may reinstate this one first).
        self._predecessor: TargetConnection | None = None
        self._drain_wait: asyncio.Task[None] | None = None
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
        transport.set_write_buffer_limits(high=_UNSENT_HIGH, low=_UNSENT_HIGH // 4)
        transport.pause_reading()
        self._setup = asyncio.ensure_future(self._reserve_connection())

    async def _reserve_connection(self) -> None:
        """Hold the receive buffer and one command slot before reading a byte."""
        server = self.server
        claims: dict[int, int] = {TargetLevel.RECV: server.recv_bytes}
        if server.config.policy is Policy.RESERVE:
            claims.update(server.slot_claims)
        try:
            res = await server.arena.reserve(claims, owner=f"{self.name}/admit")
        except Exception as exc:  # ClaimTooLargeError: the arena cannot hold one connection
            log.error("%s: refused: %s", self.name, exc)
            self._close()
            return
        if self._closing:
            res.release()
            return
        res.handoff(self.name)
        self._reservation = res
        waits = server.arena.waits
        waits.set_passive(self.name, (self.name,), "its receive buffer")
        # Command buffers (`--policy none`) are freed when the commands complete, which
        # takes their Data-Out: only this connection's reader can deliver it.
        waits.set_passive(f"{self.name}/cmds", (f"{self.name}/reader",))
        if server.config.policy is Policy.RESERVE:
            self._first_slot = res.split(server.slot_claims, owner=f"{self.name}/slots")
        recv = res.take(TargetLevel.RECV, server.recv_bytes)
        if len(recv.segments) != 1:
            recv.put_back()
            log.error("%s: refused: the arena is too fragmented for a receive buffer", self.name)
            self._close()
            return
        self._recv = recv
        self._rb = recv.view
        if self._early_n:
            self._rb[: self._early_n] = self._early[: self._early_n]
            self._end = self._early_n
        self._login = TargetLogin(
            server.login_targets, portal_group_tag=1, wants=server.login_wants,
            allocate_tsih=server.allocate_tsih,
        )
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            if self._end:
                self._guarded(self._parse)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._setup is not None:
            self._setup.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._admission is not None:
            self._admission.cancel()
        for task in self._allocs:
            task.cancel()
        if self._login_wait is not None:
            self._login_wait.cancel()
        slots: list[Reservation] = []
        if self.session is not None:
            slots = self.session.close()
            self.server.session_ended(self)
            self._ended, self.session = self.session, None
        if self._first_slot is not None:
            slots.append(self._first_slot)
            self._first_slot = None
        for slot in slots:
            slot.release()
        if self._recv is not None:
            self._recv.put_back()
            self._recv = None
        if self._reservation is not None:
            self._reservation.release()
            self._reservation = None
        self.server.arena.waits.clear_passive(self.name)
        self.server.arena.waits.clear_passive(f"{self.name}/cmds")
        self.server.connection_closed(self)
        self.idle.set()
        if not self._io_running:
            self._drained()

    def _close(self, reason: str = "", error: bool = False) -> None:
        if reason:
            (log.warning if error else log.info)("%s: closing: %s", self.name, reason)
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    # -------------------------------------------------------------- receiving

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._into:
            return self._into[0]
        if self._recv is None:
            return memoryview(self._early)[self._early_n :]
        if self._end == len(self._rb):
            self._compact()
        return self._rb[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._into:
            head = self._into[0]
            if nbytes < len(head):
                self._into[0] = head[nbytes:]
                return
            self._into.pop(0)
            if self._into:
                return
        elif self._recv is None:
            # Not in get_buffer: uvloop must not stop reading inside its alloc callback.
            self._early_n += nbytes
            if self.transport is not None:
                self.transport.pause_reading()
            return
        else:
            self._end += nbytes
        self._guarded(self._parse)

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run `step` and send what it produced; whatever goes wrong ends only this
        connection, with a log line, never the server."""
        try:
            step()
            self._pump()
        except ProtocolError as exc:
            self._fatal(exc.reason)
        except Exception:
            log.exception("%s: internal error; closing the connection", self.name)
            self._close()

    def eof_received(self) -> bool | None:
        return False

    def _compact(self) -> None:
        rb, pos, end = self._rb, self._pos, self._end
        if pos:
            rb[: end - pos] = rb[pos:end]
            self._pos, self._end = 0, end - pos

    def _parse(self) -> None:
        rb = self._rb
        hd = DIGEST_LENGTH if self._header_digest else 0
        while not self._closing and self._blocked() is False:
            pos, avail = self._pos, self._end - self._pos
            if avail < BHS_LENGTH:
                break
            bhs = rb[pos : pos + BHS_LENGTH]
            ahs_len, dsl = bhs_lengths(bhs)
            if dsl > self._limit:
                self._reject_and_close(bhs, f"data segment of {dsl} B exceeds "
                                       f"MaxRecvDataSegmentLength {self._limit}")
                return
            head = BHS_LENGTH + ahs_len + hd
            if avail < head:
                self._make_room(head)
                break
            if hd and header_digest(rb[pos : pos + BHS_LENGTH + ahs_len]) != rb[pos + head - hd :
                                                                                pos + head]:
                raise DigestError("header digest mismatch", header=True)
            dd = DIGEST_LENGTH if self._data_digest and dsl else 0
            tail = (-dsl & 3) + dd
            placed = self._placed
            if placed is None and avail - head < dsl and self.session is not None:
                views = self.session.placement(bhs)
                if views is not None:
                    have = min(avail - head, dsl)
                    self._fill_from_rb(views, pos + head, have)
                    # The segment's bytes in rb are moved out: what follows it will be
                    # read in at pos + head, where the segment began.
                    rest = _skip(views, have)
                    self._end = pos + head + (avail - head - have)
                    if avail - head - have:
                        rb[pos + head : self._end] = rb[pos + head + have : pos + avail]
                    self._placed = placed = views
                    if rest:
                        self._into = rest
                        return
            data_len = 0 if placed is not None else dsl
            total = head + data_len + tail
            if avail < total:
                self._make_room(total)
                break
            data_at = pos + head
            data: memoryview | bytes
            if placed is not None:
                data = placed[0] if len(placed) == 1 else b"".join(placed)
            else:
                data = rb[data_at : data_at + dsl]
            if dd:
                crc = crc32c(padding(dsl), _crc(placed) if placed is not None
                             else crc32c(data))
                wire = rb[data_at + data_len + tail - dd : data_at + data_len + tail]
                if crc.to_bytes(4, "little") != wire:
                    self._placed = None
                    self._pos = pos + total
                    self._reject_and_close(bhs, f"data digest mismatch on a {dsl}-byte segment",
                                           RejectReason.DATA_DIGEST_ERROR)
                    return
            self._placed = None
            self._pos = pos + total
            try:
                pdu = decode_pdu(bhs, rb[pos + BHS_LENGTH : pos + BHS_LENGTH + ahs_len], data)
            except ProtocolError as exc:
                if self.session is None:
                    self._fatal(exc.reason)
                    return
                log.info("%s: rejecting a PDU: %s", self.name, exc.reason)
                self.session.reject(bhs, exc.reject or RejectReason.PROTOCOL_ERROR)
                continue
            if self.session is not None:
                self.session.receive(pdu, self._clock(), placed=placed is not None)
            else:
                self._login_pdu(pdu)
        if self._pos == self._end:
            self._pos = self._end = 0

    def pause_writing(self) -> None:
        """The initiator reads slower than we answer: stop reading commands, so the bytes
        queued for it (outside the arena) stop growing with every command admitted."""
        self._write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._closing:
            self._resume()

    def _blocked(self) -> bool:
        if self._write_paused:
            return True
        session = self.session
        if session is not None and session.blocked is not None:
            if self.transport is not None:
                self.transport.pause_reading()
            return True
        return False

    def _make_room(self, total: int) -> None:
        if self._pos + total > len(self._rb):
            self._compact()

    def _fill_from_rb(self, views: list[memoryview], at: int, n: int) -> None:
        rb = self._rb
        for view in views:
            if n <= 0:
                break
            k = min(len(view), n)
            view[:k] = rb[at : at + k]
            at += k
            n -= k

    def _reject_and_close(self, bhs: memoryview, reason: str,
                          code: RejectReason = RejectReason.PROTOCOL_ERROR) -> None:
        if self.session is not None:
            self.session.reject(bhs, code)
        self._fatal(reason)

    def _fatal(self, reason: str) -> None:
        # The log line first: the peer may act on the Reject sent below before a line
        # logged after it is written.
        log.warning("%s: closing: %s", self.name, reason)
        self._pump()
        self._close()

    # ------------------------------------------------------------------ login

    def _login_pdu(self, pdu: object) -> None:
        login = self._login
        if not isinstance(pdu, LoginRequest) or login is None:
            self._fatal(f"{type(pdu).__name__} before login completed")
            return
        slots = 1 if self.server.config.policy is Policy.RESERVE else self.server.config.window
        resp = login.receive(pdu, exp_cmd_sn=pdu.cmd_sn,
                             max_cmd_sn=(pdu.cmd_sn + slots - 1) & 0xFFFFFFFF,
                             stat_sn=self._stat_sn)
        self._stat_sn = (self._stat_sn + 1) & 0xFFFFFFFF
        if login.done and not login.failed and login.target is not None:
            old = self.server.predecessor(login.initiator_name or "?", login.isid, self)
            if old is not None:
                # Session reinstatement (RFC 7143 §6.3.5): the old session's tasks end
                # before this one begins, so a write of the old one still on its way to
                # the disk cannot land after this session's writes.
                self._predecessor = old
                # The nexus is this connection's now: a later login of it reinstates
                # this one, and waits for both.
                self.server.nexus_started(login.initiator_name or "?", login.isid, self)
                self._login_wait = asyncio.ensure_future(
                    self._login_after(old, serialize(resp, False, False), login, pdu.cmd_sn))
                return
        self._write(serialize(resp, False, False))
        if login.failed:
            self._close(f"login refused: {login.reason}", error=True)
            return
        if login.done:
            self._start_session(login, pdu.cmd_sn)

    async def _login_after(self, old: TargetConnection, resp: list[bytes | memoryview],
                           login: TargetLogin, cmd_sn: int) -> None:
        old.abort("its session is reinstated by a new login")
        if not old.drained.is_set():
            log.info("%s: waiting for %s's I/O to finish before the session is reinstated",
                     self.name, old.name)
        await old.drained.wait()
        self._login_wait = None
        self._predecessor = None
        if self._closing:
            return
        self._write(resp)
        self._start_session(login, cmd_sn)
        if self._pos < self._end:
            self._guarded(self._parse)

    def _start_session(self, login: TargetLogin, cmd_sn: int) -> None:
        server = self.server
        params = login.params
        target = login.target
        initiator = login.initiator_name or "?"
        units = server.units_of(target.iqn) if target is not None else {}
        answer = discovery_answer(server.login_targets, server.portals, initiator_name=initiator,
                                  session_target=target.iqn if target is not None else None)
        slots = [self._first_slot] if self._first_slot is not None else []
        self._first_slot = None
        self.session = TargetSession(
            params, units, exp_cmd_sn=cmd_sn, stat_sn=self._stat_sn, slots=slots,
            config=server.config, name=self.name, now=server.loop.time(),
            text=TextResponder(answer, max_segment=params.initiator_mrdsl),
            nexus=Nexus(initiator, login.isid),
        )
        self._header_digest, self._data_digest = params.header_digest, params.data_digest
        self._limit = params.target_mrdsl
        self._login = None
        log.info("%s: %s session for %s with %s", self.name, login.session_type, initiator,
                 target.iqn if target is not None else "discovery")
        server.session_started(self)
        if target is not None:
            server.nexus_started(initiator, login.isid, self)

    # ---------------------------------------------------------------- sending

    def _write(self, pieces: list[bytes | memoryview]) -> None:
        if pieces and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(pieces)

    def _pump(self) -> None:
        """Send what the session queued, then start what it asked for."""
        session = self.session
        if session is None:
            return
        self._write(session.data_to_send())
        loop = self.server.loop
        while (event := session.next_event()) is not None:
            if isinstance(event, IoRequest):
                if not self._read_inline(session, event):
                    self._io_running += 1
                    fut = loop.run_in_executor(self.server.pool, run_io, event)
                    fut.add_done_callback(self._io_callback(event))
            elif isinstance(event, AllocRequest):
                task = asyncio.ensure_future(self._allocate(event))
                self._allocs.add(task)
                task.add_done_callback(self._allocs.discard)
            elif isinstance(event, CloseConnection):
                self._write(session.data_to_send())
                self._close(event.reason, event.error)
        self._write(session.data_to_send())
        self._rearm_timer()
        if session.slot_demand() and self._admission is None and not self._closing:
            self._admission = asyncio.ensure_future(self._admit())
        if session.tasks:
            self.idle.clear()
        else:
            self.idle.set()

    def _read_inline(self, session: TargetSession, io: IoRequest) -> bool:
        """Do a small read here on the loop when its data is in the page cache.

        A thread round trip (submit, wake a worker, wake the loop through its self-pipe)
        costs tens of microseconds; a cached 4 KiB preadv costs about two, and its
        Data-In then leaves in the same `writelines` as the rest of the batch. Only a
        command's single window qualifies: its buffer was carved when the command
        arrived, so no Data-In still queued from this pump can point into it. Whatever
        is not cached, or fails, goes to the pool, whose `run_io` reports errors.
        """
        plan = io.plan
        if type(plan) is not ReadPlan or io.offset or not io.last:
            return False
        # One window that is the whole read: its views hold the transfer, `xfer` bytes.
        if io.task.xfer > INLINE_READ_BYTES:
            return False
        unit = io.unit
        try:
            if not unit.backing.read_cached(plan.lba * unit.disk.block_size, io.views):
                return False
        except (BackingError, OSError):
            return False
        session.io_done(io, b"")
        return True

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
            if fut.cancelled():
                sense = _internal_error()
            elif fut.exception() is not None:
                log.error("%s: backing I/O failed: %r", self.name, fut.exception())
                sense = _internal_error()
            else:
                sense = fut.result()
            self._guarded(lambda: session.io_done(io, sense))
            if not self._closing and session.blocked is None and self.transport is not None:
                self._resume()

        return done

    def _resume(self) -> None:
        if self._into or self.transport is None:
            return
        if self._pos < self._end:
            self._guarded(self._parse)
        if (self.session is not None and self.session.blocked is None and not self._closing
                and not self._write_paused):
            self.transport.resume_reading()

    async def _allocate(self, req: AllocRequest) -> None:
        """`--policy none`: plain allocation on demand, which may wait for memory.

        Who waits matters to the deadlock detector: for unsolicited data it is the
        connection's reader (paused until the buffer comes), otherwise the command.
        Once granted, the buffer is held by the connection's commands as a group.
        """
        waiter = f"{self.name}/reader" if req.blocking else f"{self.name}/{req.task.owner}"
        buf = await self.server.arena.allocate(TargetLevel.BUFFER, req.nbytes, owner=waiter)
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
        server = self.server
        try:
            while (session := self.session) is not None and session.slot_demand():
                res = await server.arena.reserve(server.slot_claims, owner=f"{self.name}/admit")
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
        when = session.timer()
        if self._timer is not None:
            # The deadline moves on with every PDU received; a timer armed for an earlier
            # moment is kept (firing early is harmless: the session checks the time and
            # `_on_timer` re-arms), so a busy connection does not make a TimerHandle per PDU.
            if when is not None and self._timer.when() <= when:
                return
            self._timer.cancel()
            self._timer = None
        if when is not None:
            self._timer = self.server.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.session is not None and not self._closing:
            self.session.handle_timer(self.server.loop.time())
            self._pump()

    # ----------------------------------------------------------------- stopping

    def _drained(self) -> None:
        old = self._predecessor
        if old is not None and not old.drained.is_set():
            self._drain_wait = asyncio.ensure_future(self._drained_after(old))
            return
        self.drained.set()
        self.server.nexus_ended(self)

    async def _drained_after(self, old: TargetConnection) -> None:
        await old.drained.wait()
        self._predecessor = self._drain_wait = None
        self._drained()

    def kick(self) -> None:
        """The session's share of slots changed: start admission if it wants more."""
        if not self._closing:
            self._pump()

    def busy(self) -> bool:
        return self.session is not None and bool(self.session.tasks)

    def abort(self, reason: str) -> None:
        self._close(reason, error=True)


def _skip(views: list[memoryview], n: int) -> list[memoryview]:
    out: list[memoryview] = []
    for view in views:
        if n >= len(view):
            n -= len(view)
            continue
        out.append(view[n:])
        n = 0
    return out


def _crc(views: list[memoryview]) -> int:
    crc = 0
    for view in views:
        crc = crc32c(view, crc)
    return crc


def _internal_error() -> bytes:
    return ScsiError(SenseKey.HARDWARE_ERROR, 0x44, 0x00).sense()
