"""The iSCSI block device on asyncio: admission, login, reconnect, the session's one timer.

:class:`BlockDevice` is what ``earmark.open(url)`` returns. Every command goes
through :meth:`BlockDevice.execute`, which is where the memory discipline bites:

* under ``reserve`` (the default) a command is admitted only once one claim
  covers its task descriptor and Data-Out headers (TASK) and every receive
  buffer it can cause, R2Ts, Data-In headers and a response with sense (WIRE);
  the claim is computed from the negotiated limits (:meth:`command_cost`) and
  held until the command's status arrives, then kept for the next command of
  the same size, but only until anyone has to wait for memory
  (:meth:`BlockDevice._pool`);
* under the other policies the same charges are allocated as the command needs
  them, each of which may wait while holding the previous one, which is how
  those disciplines deadlock: the task descriptor and Data-Out headers at
  submit (``earmark.memory.draw``), and each receive buffer (R2T, Data-In
  header, response with sense) when its PDU arrives, half a round trip later,
  as a real receive path allocates skbs. The reader allocates those marked
  PF_MEMALLOC (``Arena.memalloc``: it may use the emergency pool); when even
  that cannot be granted, it stops reading until it is (:meth:`_admit`), so
  every command in flight then waits on the stalled receiver, and the wait
  registry says so for the deadlock detector;
* the page cache hands its own reservation down (``write_pages``/``read_page``
  run under the reservation it made when the page became dirty), so the device
  draws on that instead of reserving.

Each connection holds its receive buffer (WIRE) for its whole life; it is where
every PDU not placed in a caller's buffer is parsed, unsolicited ones (NOP-In,
Async Message, Reject) included, so they never need memory on arrival.

A command past its timeout is aborted (ABORT TASK) and, once the target confirms,
sent again on the same session. A lost connection (reset, an abort the target
does not answer, a target that breaks the protocol) is recovered at ERL 0: log
in again with the same ISID and TSIH 0 (session reinstatement: the target drops
the old session and its tasks) and issue every unanswered command again in CmdSN
order. A write is acknowledged only by its
GOOD status, so an acknowledged write is never sent again and an
unacknowledged one is only ever repeated whole (WRITE is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from types import TracebackType
from typing import Any, cast

from earmark.host.policy import Policy
from earmark.initiator.errors import (
    CommandTimeoutError,
    ConnectError,
    InitiatorError,
    LoginError,
    SessionLostError,
)
from earmark.initiator.session import Command, InitiatorSession, Timeouts
from earmark.initiator.url import IscsiUrl, parse_url
from earmark.iscsi.discovery import DiscoveredTarget, TextRequester, send_targets_from_pairs
from earmark.iscsi.errors import ProtocolError
from earmark.iscsi.login import InitiatorLogin, LoginFailed
from earmark.iscsi.negotiation import SessionParams
from earmark.iscsi.opcodes import LogoutReason, Opcode
from earmark.iscsi.pdu import (
    LoginRequest,
    LoginResponse,
    LogoutRequest,
    LogoutResponse,
    Pdu,
    TextRequest,
    TextResponse,
)
from earmark.iscsi.stream import receive_buffer_bytes
from earmark.memory import Arena, HostLevel, Wait, WaitKind
from earmark.memory.allocation import Buffer, Charge
from earmark.memory.claim import Claim
from earmark.memory.draw import draw_charge
from earmark.memory.levels import (
    RESPONSE_HEADER_BYTES,
)
from earmark.memory.reservation import Reservation, handed_down
from earmark.runtime.initiator_common import (
    DEFAULT_INITIATOR_NAME,
    MAX_IO_BYTES,
    SENSE_BYTES,
    WANTS,
    DeviceBase,
    check_extent,
    chunks,
    command_bytes,
    login_error,
    new_isid,
    unmap_command,
)
from earmark.runtime.initiator_connection import RECEIVE_PDUS, InitiatorStream
from earmark.scsi import cdb as C

__all__ = ["DEFAULT_INITIATOR_NAME", "BlockDevice", "Policy", "discover"]

_RESPONSE_BYTES = RESPONSE_HEADER_BYTES + SENSE_BYTES
_SCSI_RESPONSE = int(Opcode.SCSI_RESPONSE)
_ANSWER = "the target's answer"
_HELD_BACK = "the target's answer, which its stalled receiver cannot read"
_IDLE_MAX = 256
"""Idle command reservations a device keeps at most (a few hundred KiB at most)."""

class _Issued(Command):
    """A command as the device runs it: the session's fields, plus the future its
    caller awaits, the memory it holds, and since when it waits (written out as a
    :class:`Wait` only when the detector asks: :meth:`BlockDevice._waits_now`)."""

    __slots__ = ("claim", "future", "held", "owner", "res", "rx_buffers", "since")

    def __init__(self, cdb: bytes, lun: int, read_into: memoryview | None,
                 write_data: memoryview | list[memoryview] | None, owner: str) -> None:
        Command.__init__(self, cdb, lun, read_into, write_data)
        self.owner = owner
        self.future: asyncio.Future[None] | None = None
        self.since = 0.0
        #: What the command reserved under ``reserve``: ``res`` covers ``claim``.
        self.claim: Claim | None = None
        self.res: Reservation | None = None
        #: Drawn at submit: task descriptor and Data-Out headers (and receive buffers
        #: when those were reserved with the command).
        self.held: list[Charge] | tuple[()] = ()
        #: Receive buffers allocated as the target's PDUs arrived; None when they
        #: were drawn at submit, or once the command has given its memory back.
        self.rx_buffers: list[Charge] | None = None

    def drop_rx_buffers(self) -> None:
        """The connection that received them is gone: its buffers go with it."""
        rx_buffers = self.rx_buffers
        if rx_buffers:
            for charge in rx_buffers:
                charge.free()
            rx_buffers.clear()


async def _connect(
    url: IscsiUrl, buffer: memoryview, on_lost: Any, timeout: float
) -> InitiatorStream:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            _, stream = await loop.create_connection(
                lambda: InitiatorStream(buffer, on_lost), url.host, url.port
            )
    except TimeoutError:
        raise ConnectError(f"cannot reach {url.portal}: timed out after {timeout:g} s") from None
    except OSError as exc:
        raise ConnectError(f"cannot reach {url.portal}: {exc.strerror or exc}") from None
    return stream


async def _login(
    stream: InitiatorStream, login: InitiatorLogin, where: str, timeout: float
) -> SessionParams:
    """Run the login exchange; typed errors, and the stream closed on any failure."""
    try:
        req: LoginRequest | None = login.start()
        while req is not None:
            stream.send(req)
            resp = await stream.next_pdu(timeout)
            if not isinstance(resp, LoginResponse):
                raise ProtocolError(f"{resp.OPCODE.name} during login")
            req = login.receive(resp)
    except (LoginFailed, ProtocolError, TimeoutError, ConnectionError) as exc:
        stream.close("login failed")
        raise login_error(exc, where) from None
    except BaseException:  # cancelled (the device is closing): no socket left behind
        stream.close("login abandoned")
        raise
    return login.params


class BlockDevice(DeviceBase):
    """A LUN of an iSCSI target as an async block device. Use ``async with``.

    Offsets and lengths must be multiples of :attr:`block_size`.
    """

    def __init__(
        self,
        url: str | IscsiUrl,
        *,
        arena: Arena | None = None,
        policy: Policy | str = Policy.RESERVE,
        initiator_name: str = DEFAULT_INITIATOR_NAME,
        timeouts: Timeouts | None = None,
        login_timeout: float = 10.0,
        reconnect_timeout: float = 60.0,
        max_attempts: int = 4,
        environ: Mapping[str, str] | None = None,
        geometry: bool = True,
        digests: bool = False,
    ) -> None:
        """``geometry`` False skips READ CAPACITY at connect (a LUN that is no disk);
        ``digests`` asks for CRC32C header and data digests (the target may refuse);
        ``policy`` is a :class:`~earmark.host.policy.Policy` or its name."""
        super().__init__(url, arena=arena, initiator_name=initiator_name, timeouts=timeouts,
                         login_timeout=login_timeout, reconnect_timeout=reconnect_timeout,
                         max_attempts=max_attempts, environ=environ, digests=digests)
        try:
            self.policy = Policy(policy)
        except ValueError:
            raise ValueError(f"unknown policy {policy!r}; choose from "
                             f"{', '.join(p.value for p in Policy)}") from None
        self._geometry = geometry
        self._lun = self.url.lun
        #: Who waits, in the deadlock detector's words, when the reader is stalled.
        self.receiver = f"{self.name}/receiver"
        self._stream: InitiatorStream | None = None
        self._session: InitiatorSession | None = None
        self._pending: list[_Issued] = []
        self._reconnecting: asyncio.Task[None] | None = None
        self._dead: InitiatorError | None = None
        self._closing = False
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._conn_res: Reservation | None = None
        self._recv: Buffer | None = None
        # Each command's claim by transfer length, for reads and for writes.
        self._read_claims: dict[int, tuple[Claim, int, int]] = {}
        self._write_claims: dict[int, tuple[Claim, int, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logged_out: asyncio.Future[None] | None = None
        self._waits_name = f"{self.name}/commands@{id(self):x}"
        # Command reservations given back and not yet released, by claim: the next
        # command of the same size takes one instead of asking the arena. Held by
        # their own name, so that no task seems to hold them while it waits.
        self._idle: dict[Claim, list[Reservation]] = {}
        self._idle_count = 0
        self._idle_owner = f"{self.name}/idle@{id(self):x}"
        # The stalled reader's allocation, and what it was granted before resuming.
        self._stall: asyncio.Task[None] | None = None
        self._granted: Charge | None = None

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> BlockDevice:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Reserve the connection's receive buffer, log in, read the capacity."""
        self._loop = asyncio.get_running_loop()
        recv_bytes = receive_buffer_bytes(int(WANTS["MaxRecvDataSegmentLength"]), RECEIVE_PDUS)
        # The receive buffer is held for the connection's life: no progress frees it,
        # and the deadlock detector must know that (a holder it thought live would
        # hide every cycle).
        holder = f"{self.name}/receive-buffer"
        if self.policy is Policy.RESERVE:
            self._conn_res = await self.arena.reserve({HostLevel.WIRE: recv_bytes},
                                                      owner=holder)
            self._recv = self._conn_res.take(HostLevel.WIRE, recv_bytes)
        else:
            self._recv = await self.arena.allocate(HostLevel.WIRE, recv_bytes, owner=holder)
        self.arena.waits.set_passive(holder, freed_by=(), holds="its receive buffer")
        self.arena.waits.set_source(self._waits_name, self._waits_now)
        self.arena.add_shrinker(self._drop_idle)
        try:
            if len(self._recv.segments) != 1:
                raise InitiatorError("the arena is too fragmented for a connection's receive "
                                     "buffer: give the device a larger arena")
            await self._log_in()
            if self._geometry:
                await self._read_capacity()
        except BaseException:
            await self.close()
            raise

    async def _log_in(self) -> None:
        url = self.url
        assert self._recv is not None
        stream = await _connect(url, self._recv.view, self._lost, self.login_timeout)
        login = InitiatorLogin(self.initiator_name, target_name=url.target, isid=self.isid,
                               chap=url.chap, mutual=url.mutual, wants=self._wants)
        params = await _login(stream, login, f"login to {url}", self.login_timeout)
        if stream.failed is not None:  # lost right after the last login response
            raise ConnectError(f"{url}: {stream.failed}")
        self.params = params
        stream.set_full_feature(params.initiator_mrdsl, params.header_digest, params.data_digest)
        loop = asyncio.get_running_loop()
        self._session = InitiatorSession(
            params, cmd_sn=login.cmd_sn, exp_cmd_sn=login.exp_cmd_sn,
            max_cmd_sn=login.max_cmd_sn, exp_stat_sn=login.exp_stat_sn, now=loop.time(),
            timeouts=self.timeouts,
        )
        self._read_claims.clear()
        self._write_claims.clear()
        self._stream = stream
        stream.sink = self
        if self.policy is not Policy.RESERVE:
            stream.admit = self._admit
        self._arm_timer()

    async def _read_capacity(self) -> None:
        data = bytearray(32)
        await self.execute(C.read_capacity_16(32), read_into=memoryview(data))
        cap = C.parse_read_capacity_16(memoryview(data))
        self._blocks, self._block_size = cap.num_blocks, cap.block_size

    async def close(self) -> None:
        """Wait for commands in flight, log out, give the memory back. Idempotent."""
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        session, stream = self._session, self._stream
        if session is not None and stream is not None and stream.failed is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeouts.command):
                    while session.outstanding or session.queued or self._pending:
                        await asyncio.sleep(0.01)
            self._logged_out = loop.create_future()
            session.logout()
            self._flush()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.wait([self._logged_out, stream.closed],
                                       return_when=asyncio.FIRST_COMPLETED)
        self._closing = True
        reconnecting = self._reconnecting
        if reconnecting is not None:
            reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconnecting
            stream = self._stream  # a login that won the race with the cancellation
        if stream is not None:
            stream.close("closed by the application")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await stream.closed
        self._stop_receiver()
        self._fail_all(self._dead or SessionLostError(f"{self.url}: device closed"))
        self._drop_idle()
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, float("inf")
        self._session = self._stream = None
        if self._recv is not None:
            self._recv.free()
            self._recv = None
        if self._conn_res is not None:
            self._conn_res.release()
            self._conn_res = None
        self.arena.waits.clear_passive(f"{self.name}/receive-buffer")
        self.arena.waits.clear_source(self._waits_name)
        with contextlib.suppress(ValueError):  # connect failed before registering it
            self.arena.remove_shrinker(self._drop_idle)

    # ------------------------------------------------------------ geometry, cost

    def command_cost(self, write: bool, nbytes: int) -> Mapping[int, int]:
        """Bytes per level (TASK, WIRE) one command moving ``nbytes`` draws."""
        claim, _, _ = self._claim(write, nbytes)
        return {HostLevel.TASK: claim.amounts[HostLevel.TASK],
                HostLevel.WIRE: claim.amounts[HostLevel.WIRE]}

    def _claim(self, write: bool, nbytes: int) -> tuple[Claim, int, int]:
        """(claim, TASK bytes, WIRE bytes) of one command (:func:`command_bytes`)."""
        claims = self._write_claims if write else self._read_claims
        got = claims.get(nbytes)
        if got is not None:
            return got
        task, wire = command_bytes(self.params, write, nbytes)
        got = (self.arena.claim({HostLevel.TASK: task, HostLevel.WIRE: wire}), task, wire)
        if len(claims) < 1024:
            claims[nbytes] = got
        return got

    # ------------------------------------------------------------ block I/O

    def _check(self, offset: int, length: int) -> None:
        check_extent(offset, length, self._block_size, self.size)

    async def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        await self.readinto(offset, buf)
        return bytes(buf)

    async def readinto(self, offset: int, buffer: bytearray | memoryview) -> None:
        """Read ``len(buffer)`` bytes at ``offset``; Data-In lands in ``buffer`` itself."""
        view = memoryview(buffer).cast("B")
        n = len(view)
        bs = self._block_size
        if offset % bs or n % bs or offset < 0 or offset + n > self._blocks * bs:
            self._check(offset, n)  # raises, in words
        if n <= MAX_IO_BYTES:
            await self.execute(C.read_16(offset // bs, n // bs), read_into=view)
            return
        await asyncio.gather(*(
            self.execute(C.read_16((offset + at) // bs, len(part) // bs), read_into=part)
            for at, part in chunks(view)
        ))

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset``; returns once the target acknowledged all of it."""
        view = memoryview(data).cast("B")
        n = len(view)
        bs = self._block_size
        if offset % bs or n % bs or offset < 0 or offset + n > self._blocks * bs:
            self._check(offset, n)  # raises, in words
        if n <= MAX_IO_BYTES:
            await self.execute(C.write_16(offset // bs, n // bs), write_data=view)
            return
        await asyncio.gather(*(
            self.execute(C.write_16((offset + at) // bs, len(part) // bs), write_data=part)
            for at, part in chunks(view)
        ))

    async def flush(self, *, owner: str | None = None) -> None:
        """SYNCHRONIZE CACHE of the whole LUN."""
        await self.execute(C.synchronize_cache_16(), owner=owner, reserve=owner is None)

    async def discard(self, offset: int, length: int) -> None:
        """UNMAP the range (the target may then read it back as zeros or as before)."""
        self._check(offset, length)
        cdb, params = unmap_command(offset, length, self._block_size)
        await self.execute(cdb, write_data=params)

    # The page cache's side (earmark.host.device.PageDevice): it reserved already.

    async def write_pages(self, offset: int, pages: list[memoryview], *, owner: str) -> None:
        """The pages go out as they are: PDUs carry slices of them, never a joined copy."""
        bs = self._block_size
        nbytes = sum(len(page) for page in pages)
        await self.execute(C.write_16(offset // bs, nbytes // bs), write_data=pages,
                           owner=owner, reserve=False)

    async def read_page(self, offset: int, page: memoryview, *, owner: str) -> None:
        bs = self._block_size
        await self.execute(C.read_16(offset // bs, len(page) // bs), read_into=page,
                           owner=owner, reserve=False)

    # ------------------------------------------------------------ commands

    async def execute(
        self,
        cdb: bytes,
        *,
        read_into: memoryview | None = None,
        write_data: memoryview | list[memoryview] | None = None,
        lun: int | None = None,
        owner: str | None = None,
        reserve: bool = True,
    ) -> Command:
        """Run one SCSI command; raises ScsiError (CHECK CONDITION) or an InitiatorError.

        ``reserve`` False means the caller made the reservation (it is current) or
        runs a policy without one: the device only draws. ``write_data`` may be a
        list of buffers (a run of pages), sent as they are.
        """
        if self._dead is not None:
            raise self._dead
        loop = self._loop
        if loop is None or (self._session is None and self._reconnecting is None):
            raise SessionLostError(f"{self.url}: the device is not connected (use async with)")
        who = owner or self.name
        cmd = _Issued(cdb, self._lun if lun is None else lun, read_into, write_data, who)
        claim, task_bytes, wire_bytes = self._claim(write_data is not None, cmd.length)
        if reserve and self.policy is Policy.RESERVE:
            # The command's own reservation: held, untouched, from admission to status,
            # exactly the command's lifetime, so drawing on it would only add bookkeeping.
            # One given back by a finished command of the same size is taken as is.
            idle = self._idle.get(claim)
            if idle:
                res = idle.pop()
                self._idle_count -= 1
                res.handoff(who)
            else:
                res = await self.arena.reserve(claim, owner=who)
            cmd.claim, cmd.res = claim, res
        else:
            await self._draw(cmd, task_bytes, wire_bytes)
        now = cmd.since = loop.time()
        future = cmd.future = loop.create_future()
        try:
            self._submit(cmd, now)
            await future
        finally:
            if future.done():
                self._give_back(cmd)
            else:  # cancelled: the target may still answer into the command's buffers
                future.add_done_callback(lambda _: self._give_back(cmd))
        if cmd.error is not None:
            raise cmd.error
        return cmd

    async def _draw(self, cmd: _Issued, task_bytes: int, wire_bytes: int) -> None:
        """Memory for a command that does not reserve its own: drawn from the caller's
        reservation, or allocated (policies other than ``reserve``), which may wait."""
        arena, who = self.arena, cmd.owner
        held = [await draw_charge(arena, HostLevel.TASK, task_bytes, owner=who)]
        if self.policy is Policy.RESERVE or handed_down() is not None:
            # Receive buffers reserved with the command: drawn with the rest, now.
            try:
                held.append(await draw_charge(arena, HostLevel.WIRE, wire_bytes, owner=who))
            except BaseException:
                held[0].free()
                raise
        else:
            cmd.rx_buffers = []  # allocated as the target's PDUs arrive (see _admit)
        cmd.held = held

    def _give_back(self, cmd: _Issued) -> None:
        res = cmd.res
        if res is not None:
            cmd.res = None
            assert cmd.claim is not None
            self._pool(cmd.claim, res)
        held = cmd.held
        if held:
            cmd.held = ()
            for charge in held:
                charge.free()
        if cmd.rx_buffers is not None:
            cmd.drop_rx_buffers()
            cmd.rx_buffers = None  # a late answer to a cancelled command is charged to nobody

    # ------------------------------------------------------------ command reservations

    def _pool(self, claim: Claim, res: Reservation) -> None:
        """Keep a finished command's reservation for the next command of its size.

        A caller that issues its next command as soon as one finishes (every queue
        depth, the same task step) takes it back without asking the arena. It is
        kept only while nobody waits for memory: the arena calls
        :meth:`_drop_idle` before anyone waits, and nothing is pooled while anyone
        does, so an idle reservation is never what a waiter waits for (no progress
        of ours would release it).
        """
        if self._closing or self._idle_count >= _IDLE_MAX or self.arena.waiting:
            res.release()
            return
        res.handoff(self._idle_owner)
        idle = self._idle.get(claim)
        if idle is None:
            idle = self._idle[claim] = []
        idle.append(res)
        self._idle_count += 1

    def _drop_idle(self) -> None:
        """Release every idle reservation (someone is about to wait, or we close)."""
        idle, self._idle = self._idle, {}
        self._idle_count = 0
        for pooled in idle.values():
            for res in pooled:
                res.release()

    # ------------------------------------------------------------ issuing, completing

    def _unanswered(self) -> list[_Issued]:
        session = self._session
        waiting = self._pending
        return waiting if session is None else [
            *cast("list[_Issued]", session.unanswered()), *waiting]

    def _waits_now(self) -> list[Wait]:
        """Every command's wait for the target, for the detector: for the reader
        instead while it is stalled, which must resume before any answer is read."""
        if self._stall is None:
            return [Wait(c.owner, WaitKind.EXTERNAL, _ANSWER, since=c.since)
                    for c in self._unanswered()]
        held_by = (self.receiver,)
        return [Wait(c.owner, WaitKind.AGENT, _HELD_BACK, held_by, since=c.since)
                for c in self._unanswered()]

    def _answered(self, cmd: _Issued) -> None:
        future = cmd.future
        if future is not None and not future.done():
            future.set_result(None)

    def _submit(self, cmd: _Issued, now: float) -> None:
        session = self._session
        if session is None:
            self._pending.append(cmd)
            return
        idle = session.submit(cmd, now)
        if self._timer_at > now + self.timeouts.command:
            self._arm_timer(now)  # the keepalive timer is later than this command's deadline
        if self._flush_scheduled:
            return
        if idle:
            # Nothing in flight, so no answer is coming to carry a batch: send now
            # rather than one loop iteration later (what queue depth 1 waits on).
            stream = self._stream
            assert stream is not None
            stream.write(session.data_to_send())
        else:
            loop = self._loop
            assert loop is not None
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        session, stream = self._session, self._stream
        if session is not None and stream is not None:
            stream.write(session.data_to_send())

    # ------------------------------------------------------------ StreamSink

    def placement(self, bhs: memoryview) -> memoryview | None:
        session = self._session
        return session.placement(bhs) if session is not None else None

    def pdu_received(self, pdu: Pdu, placed: bool) -> None:
        session = self._session
        assert session is not None and self._loop is not None
        session.receive(pdu, self._loop.time(), placed)

    def data_in_received(self, header: memoryview, at: int, data: memoryview) -> None:
        session = self._session
        assert session is not None and self._loop is not None
        session.data_in(header, at, data, self._loop.time())

    def _admit(self, bhs: memoryview) -> bool:
        """The receive buffer of one PDU from the target, allocated as it arrives
        (policies without reservations), charged to the command it answers.

        The reader is a receive path (PF_MEMALLOC: the emergency pool counts) and
        it cannot wait in a protocol callback: if the buffer is not there at once,
        it returns False, the stream stops reading, and :meth:`_receive_when_granted`
        waits under the receiver's name. Meanwhile every command in flight waits on
        that receiver, not on the target, and is registered so: a reader that
        waits for memory only its own commands can free is the receive deadlock.
        """
        granted, self._granted = self._granted, None
        session = self._session
        cmd = session.answering(bhs) if session is not None else None
        received = cast(_Issued, cmd).rx_buffers if cmd is not None else None
        if cmd is None or received is None:  # not a command's, or reserved with it
            if granted is not None:
                granted.free()
            return True
        owner = cast(_Issued, cmd).owner
        if granted is None:
            nbytes = _RESPONSE_BYTES if bhs[0] & 0x3F == _SCSI_RESPONSE else RESPONSE_HEADER_BYTES
            with self.arena.memalloc():
                granted = self.arena.allocate_charge_now(HostLevel.WIRE, nbytes, owner=owner)
            if granted is None:
                self._stall_reader(nbytes)
                return False
        else:
            granted.handoff(owner)
        received.append(granted)
        return True

    def _stall_reader(self, nbytes: int) -> None:
        assert self._loop is not None and self._stream is not None
        self._stall = self._loop.create_task(
            self._receive_when_granted(self._stream, nbytes), name=self.receiver)

    async def _receive_when_granted(self, stream: InitiatorStream, nbytes: int) -> None:
        with self.arena.memalloc():
            granted = await self.arena.allocate_charge(HostLevel.WIRE, nbytes,
                                                       owner=self.receiver)
        self._stall = None
        if stream is not self._stream or stream.failed is not None:
            granted.free()
            return
        self._granted = granted  # for the PDU the stream stopped at: it parses that first
        stream.resume()

    def _stop_receiver(self) -> None:
        """The connection is going: a stalled reader waits no more."""
        stall, self._stall = self._stall, None
        if stall is not None:
            stall.cancel()
        granted, self._granted = self._granted, None
        if granted is not None:
            granted.free()

    def batch_done(self) -> None:
        session, stream = self._session, self._stream
        if session is None or stream is None:
            return
        if session.completed:
            retry = None
            for cmd in cast("list[_Issued]", session.take_completed()):
                if cmd.error is not None and self._send_again(cmd):
                    cmd.drop_rx_buffers()  # the last run's, allocated as its PDUs came
                    retry = retry or []
                    retry.append(cmd)
                    continue
                self._answered(cmd)
            if retry:
                assert self._loop is not None
                for cmd in retry:
                    session.submit(cmd, self._loop.time())
        logged_out = self._logged_out
        if session.logout_response is not None and logged_out is not None \
                and not logged_out.done():
            logged_out.set_result(None)
        stream.write(session.data_to_send())
        if session.failure is not None:
            stream.abort(session.failure)

    # ------------------------------------------------------------ timer

    def _arm_timer(self, now: float | None = None) -> None:
        """One timer per connection, re-armed when it fires, or when a command is issued
        with a deadline before it (``now`` given): otherwise deadlines only move later
        while it waits, so firing early and asking the session again is enough."""
        session, loop = self._session, self._loop
        if session is None or loop is None:
            return
        if self._timer is not None:
            if now is None:
                return
            self._timer.cancel()
        when = session.get_timer()
        if when is None:
            self._timer, self._timer_at = None, float("inf")
        else:
            self._timer, self._timer_at = loop.call_at(when, self._on_timer), when

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        session, stream = self._session, self._stream
        if session is None or stream is None or self._loop is None:
            return
        session.handle_timer(self._loop.time())
        stream.write(session.data_to_send())
        if session.failure is not None:
            stream.abort(session.failure)
            return
        self._arm_timer()

    # ------------------------------------------------------------ recovery

    def _lost(self, stream: InitiatorStream, reason: str) -> None:
        if stream is not self._stream:
            return
        session = self._session
        self._session = self._stream = None
        self._stop_receiver()
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, float("inf")
        if session is None:
            return
        abandoned = cast("list[_Issued]", session.abandon())
        for cmd in abandoned:
            cmd.drop_rx_buffers()
        self._pending[:0] = abandoned
        if self._closing or self._logged_out is not None:
            self._fail_all(SessionLostError(f"{self.url}: {reason}"))
            return
        timed_out = "got no answer" in reason
        keep = []
        for cmd in self._pending:
            if cmd.attempts >= self.max_attempts:
                error_cls = CommandTimeoutError if timed_out else SessionLostError
                self._complete(cmd, error_cls(
                    f"{self.url}: command not done after {cmd.attempts} attempts: {reason}"))
            else:
                keep.append(cmd)
        self._pending = keep
        if self._reconnecting is None:
            self._reconnecting = asyncio.ensure_future(self._reconnect(reason))

    async def _reconnect(self, reason: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout
        delay = 0.05
        last: Exception | None = None
        try:
            while loop.time() < deadline:
                try:
                    await self._log_in()
                    break
                except InitiatorError as exc:
                    # While a target restarts it may listen before its targets exist
                    # (NOT FOUND) or refuse for a moment: retry everything until the deadline.
                    last = exc
                await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
                delay = min(delay * 2, 1.0)
            else:
                self._dead = SessionLostError(
                    f"{self.url}: connection lost ({reason}) and not re-established in "
                    f"{self.reconnect_timeout:g} s: {last}")
                self._fail_all(self._dead)
                return
        finally:
            self._reconnecting = None
        self.reconnects += 1
        session = self._session
        assert session is not None
        pending, self._pending = self._pending, []
        self.reissued += sum(cmd.attempts > 0 for cmd in pending)
        for cmd in pending:
            session.submit(cmd, loop.time())
        self._flush()

    def _complete(self, cmd: _Issued, error: Exception) -> None:
        cmd.error = error
        self._answered(cmd)

    def _fail_all(self, error: InitiatorError) -> None:
        pending, self._pending = self._pending, []
        for cmd in pending:
            self._complete(cmd, error)


# ---------------------------------------------------------------- discovery


async def discover(
    url: str | IscsiUrl,
    *,
    initiator_name: str = DEFAULT_INITIATOR_NAME,
    timeout: float = 10.0,
    environ: Mapping[str, str] | None = None,
) -> list[DiscoveredTarget]:
    """SendTargets=All in a discovery session at the URL's portal."""
    portal = url if isinstance(url, IscsiUrl) else parse_url(url, need_target=False,
                                                              environ=environ)
    where = f"discovery at {portal.portal}"
    buffer = memoryview(bytearray(
        receive_buffer_bytes(int(WANTS["MaxRecvDataSegmentLength"]), RECEIVE_PDUS)))
    stream = await _connect(portal, buffer, lambda s, r: None, timeout)
    try:
        login = InitiatorLogin(initiator_name, target_name=None, isid=new_isid(),
                               chap=portal.chap, mutual=portal.mutual)
        params = await _login(stream, login, where, timeout)
        stream.set_full_feature(params.initiator_mrdsl, params.header_digest,
                                params.data_digest)
        cmd_sn, exp_stat_sn = login.cmd_sn, login.exp_stat_sn
        text = TextRequester([("SendTargets", "All")], itt=1)
        req: TextRequest | None = text.start(cmd_sn=cmd_sn, exp_stat_sn=exp_stat_sn)
        try:
            while req is not None:
                stream.send(req)
                resp = await stream.next_pdu(timeout)
                if not isinstance(resp, TextResponse):
                    raise ProtocolError(f"{resp.OPCODE.name} instead of a Text Response")
                exp_stat_sn = (resp.stat_sn + 1) & 0xFFFFFFFF
                req = text.receive(resp, cmd_sn=cmd_sn, exp_stat_sn=exp_stat_sn)
            stream.send(LogoutRequest(reason=LogoutReason.CLOSE_SESSION, itt=2, cmd_sn=cmd_sn,
                                      exp_stat_sn=exp_stat_sn, immediate=True))
            with contextlib.suppress(TimeoutError, ConnectionError):
                while not isinstance(await stream.next_pdu(timeout), LogoutResponse):
                    pass
        except (ProtocolError, TimeoutError, ConnectionError) as exc:
            raise LoginError(f"{where}: SendTargets failed: "
                             f"{getattr(exc, 'reason', None) or exc or 'timed out'}") from None
        return send_targets_from_pairs(text.pairs)
    finally:
        stream.close("discovery done")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await stream.closed
