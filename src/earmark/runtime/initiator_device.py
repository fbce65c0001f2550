"""The iSCSI block device on asyncio: the adapter that runs the initiator's driver on a loop.

:class:`BlockDevice` is what ``earmark.open(url)`` returns. The session's life
(``earmark.initiator.driver``), a command's memory (``.admission``), each block
call's commands (``.device``), recovery and the login and SendTargets steps are
decided in ``earmark.initiator``; this module awaits memory and answers, keeps
the session's one timer, batches what it submits and carries bytes. Under the
policies without reservations its reader may stall for memory
(``earmark.runtime.stalling_reader``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Unpack, cast

from earmark.host.device import StillInFlight
from earmark.host.policy import Policy
from earmark.initiator.admission import Admitted, waits_for_answers
from earmark.initiator.device import (
    DEFAULT_INITIATOR_NAME,
    RECEIVE_BUFFER_BYTES,
    WANTS,
    DeviceOptions,
    policy_named,
)
from earmark.initiator.driver import LOGOUT_WAIT, Driver
from earmark.initiator.errors import ConnectError, SessionLostError
from earmark.initiator.failure import ConnectionFailed, FailureKind
from earmark.initiator.session import Command
from earmark.initiator.url import IscsiUrl
from earmark.memory import Wait
from earmark.runtime.initiator_connection import (
    InitiatorStream,
    discover,
    log_in_again,
    open_stream,
)
from earmark.runtime.loop_timer import LoopTimer
from earmark.runtime.stalling_reader import StallingReader
from earmark.scsi import cdb as C

__all__ = ["DEFAULT_INITIATOR_NAME", "WANTS", "BlockDevice", "Policy", "discover"]


async def _first(timeout: float, *waits: asyncio.Future[None]) -> None:
    """Until the first of ``waits`` is done, or ``timeout`` seconds passed."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)


class _Issued(Admitted):
    """A command as the asyncio device runs it: the future its caller awaits."""

    __slots__ = ("future",)

    future: asyncio.Future[None]


class BlockDevice(Driver[InitiatorStream]):
    """A LUN of an iSCSI target as an async block device. Use ``async with``.

    Offsets and lengths must be multiples of :attr:`block_size`.
    """

    def __init__(self, url: str | IscsiUrl, *, policy: Policy | str = Policy.RESERVE,
                 geometry: bool = True, **options: Unpack[DeviceOptions]) -> None:
        """``geometry`` False skips READ CAPACITY at connect (a LUN that is no disk);
        ``policy`` is a :class:`~earmark.host.policy.Policy` or its name; the other
        options are :class:`~earmark.initiator.device.DeviceBase`'s."""
        super().__init__(url, policy=policy_named(policy), **options)
        self._geometry = geometry
        self._lun = self.url.lun
        #: Who waits, in the deadlock detector's words, when the reader is stalled.
        self.receiver = f"{self.name}/receiver"
        self._reader = StallingReader(self, self.receiver)
        self._reconnecting: asyncio.Task[None] | None = None
        self._flush_scheduled = False
        self._timer = LoopTimer(self.timer)
        self._recv: memoryview | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logged_out: asyncio.Future[None] | None = None
        self._waits_name = f"{self.name}/commands@{id(self):x}"

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> BlockDevice:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def connect(self) -> None:
        """Reserve the connection's receive buffer, log in, read the capacity."""
        loop = self._loop = asyncio.get_running_loop()
        self.clock = loop.time
        self.arena.waits.set_source(self._waits_name, self._waits_now)
        self.admission.start()
        try:
            self._recv = await self.admission.receive_buffer(RECEIVE_BUFFER_BYTES)
            await self._log_in()
            if self._geometry:
                data = memoryview(bytearray(32))
                await self.execute(C.read_capacity_16(32), read_into=data)
                self._geometry_from(data)
        except BaseException:
            await self.close()
            raise

    async def _log_in(self) -> None:
        assert self._recv is not None
        steps = self.login_steps()
        stream = await open_stream(self.url, self._recv, self._lost, steps, self.login_timeout)
        if stream.failed is not None:  # lost right after the last login response
            raise ConnectError(f"{self.url}: {stream.failed}")
        session = self.attach(steps, stream)
        stream.sink = self
        if not self.admission.reserves:  # receive buffers come as the answers do
            stream.admit = self._reader.admit
        self._timer.arm(session.get_timer())

    async def close(self) -> None:
        """Wait for commands in flight, log out, give the memory back. Idempotent."""
        if self.closing:
            return
        stream = self.stream
        if stream is not None and stream.failed is None:
            answers = [cast("_Issued", cmd).future for cmd in self.unanswered()]
            if answers:  # their answers end the wait, or a command's time does
                await asyncio.wait(answers, timeout=self.timeouts.command)
        logged_out = self._logged_out = asyncio.get_running_loop().create_future()
        stream = self.stream
        if self.log_out() and not self.logged_out:
            assert stream is not None
            await _first(LOGOUT_WAIT, logged_out, stream.closed)
        self.admission.stop()
        reconnecting = self._reconnecting
        if reconnecting is not None:
            reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconnecting
        stream = self.stream  # or a login that won the race with the cancellation
        if stream is not None:
            stream.close("closed by the application")
            await _first(LOGOUT_WAIT, stream.closed)
        self._reader.stop()
        self.shut()
        self._timer.arm(None)
        self.arena.waits.clear_source(self._waits_name)

    def logged_out_now(self) -> None:
        logged_out = self._logged_out
        if logged_out is not None and not logged_out.done():
            logged_out.set_result(None)

    # ------------------------------------------------------------ block I/O

    async def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        await self.readinto(offset, buf)
        return bytes(buf)

    async def readinto(self, offset: int, buffer: bytearray | memoryview) -> None:
        """Read ``len(buffer)`` bytes at ``offset``; Data-In lands in ``buffer`` itself."""
        view = memoryview(buffer).cast("B")
        cdb = self.command(offset, view, False)
        if cdb is not None:
            await self.execute(cdb, read_into=view)
        else:
            await asyncio.gather(*(self.execute(one, read_into=part)
                                   for one, part in self.plan(offset, view, False)))

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset``; returns once the target acknowledged all of it."""
        view = memoryview(data).cast("B")
        cdb = self.command(offset, view, True)
        if cdb is not None:
            await self.execute(cdb, write_data=view)
        else:
            await asyncio.gather(*(self.execute(one, write_data=part)
                                   for one, part in self.plan(offset, view, True)))

    async def flush(self, *, owner: str | None = None) -> None:
        """SYNCHRONIZE CACHE of the whole LUN (CacheLostError: it cannot vouch for them all)."""
        covers = self.durability.acked
        await self.execute(C.synchronize_cache_16(), owner=owner, reserve=owner is None)
        self.durability.flushed(covers)

    async def discard(self, offset: int, length: int) -> None:
        """UNMAP the range (the target may then read it back as zeros or as before)."""
        cdb, params = self.unmap(offset, length)
        await self.execute(cdb, write_data=params)

    # The page cache's side (earmark.host.device.PageDevice): it reserved already.

    # Plain functions handing back execute's coroutine: a coroutine of their own would
    # only forward to it, for every page the cache writes or reads.

    def write_pages(self, offset: int, pages: list[memoryview], *,
                    owner: str) -> Coroutine[Any, Any, Command]:
        """The pages go out as they are: PDUs carry slices of them, never a joined copy."""
        cdb = self.page_command(offset, sum(map(len, pages)), True)
        return self.execute(cdb, write_data=pages, owner=owner, reserve=False)

    def read_page(self, offset: int, page: memoryview, *,
                  owner: str) -> Coroutine[Any, Any, Command]:
        return self.execute(self.page_command(offset, len(page), False), read_into=page,
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
        if self.dead is not None:
            raise self.dead
        loop = self._loop
        if loop is None or (self.session is None and self._reconnecting is None):
            raise SessionLostError(f"{self.url}: the device is not connected (use async with)")
        who = owner or self.name
        cmd = _Issued(cdb, self._lun if lun is None else lun, read_into, write_data, who)
        waiting = self.admission.admit(cmd, reserve)
        if waiting is not None:
            await waiting
        now = cmd.since = loop.time()
        future = cmd.future = loop.create_future()
        try:
            self._submit(cmd, now)
            await future
        except asyncio.CancelledError:
            if future.cancelled():  # the caller gave up, not the command: it is in flight
                raise self._abandoned(cmd, loop) from None
            raise  # answered, and cancelled before the caller ran again: it is over
        finally:
            if not future.cancelled():
                cmd.give_back(self.admission)
        if cmd.error is not None:
            raise cmd.error
        return cmd

    def _abandoned(self, cmd: _Issued, loop: asyncio.AbstractEventLoop) -> StillInFlight:
        """The caller of a command in flight was cancelled. The target may still ask for
        its data or answer into its buffers, and its CmdSN is spent: it runs on, its
        memory held until its answer (or its session's end) delivers it, and then
        `StillInFlight.ended` tells the caller's owner of its buffers how it ended."""
        ended: asyncio.Future[Exception | None] = loop.create_future()

        def end(_: object) -> None:
            cmd.give_back(self.admission)
            ended.set_result(cmd.error)

        cmd.future = loop.create_future()  # what `deliver` completes now
        cmd.future.add_done_callback(end)
        return StillInFlight(ended)

    def _waits_now(self) -> list[Wait]:
        return waits_for_answers(cast("list[Admitted]", self.unanswered()),
                                 self.receiver if self._reader.stalled else None)

    def deliver(self, done: list[Command]) -> None:
        for cmd in done:  # each an _Issued: typing.cast would be one more call a batch
            future = cmd.future  # type: ignore[attr-defined]
            if not future.done():
                future.set_result(None)

    def dropped(self, cmd: Command) -> None:
        cast("_Issued", cmd).drop_rx_buffers()  # the last run's, allocated as its PDUs came

    def _submit(self, cmd: _Issued, now: float) -> None:
        session = self.session
        if session is None:
            self.pending.append(cmd)
            return
        idle = session.submit(cmd, now)
        timer = self._timer
        if timer.at > now + self.timeouts.command:
            timer.arm(session.get_timer())  # the keepalive is later than this deadline
        if self._flush_scheduled:
            return
        if idle:
            # Nothing in flight, so no answer is coming to carry a batch: send now
            # rather than one loop iteration later (what queue depth 1 waits on).
            stream = self.stream
            assert stream is not None
            stream.write(session.data_to_send())
        else:
            loop = self._loop
            assert loop is not None
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        session, stream = self.session, self.stream
        if session is not None and stream is not None:
            stream.write(session.data_to_send())

    # ------------------------------------------------------------ recovery

    def _lost(self, stream: InitiatorStream, reason: str) -> None:
        if stream is not self.stream:
            return
        self._reader.stop()
        self._timer.arm(None)
        failure = ConnectionFailed(stream.failed_kind or FailureKind.CLOSED, reason)
        if self.lost(failure) and self._reconnecting is None:
            self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        backoff = self.backoff(self.clock())
        try:
            again = await log_in_again(backoff, self._log_in)
        finally:
            self._reconnecting = None
        if again:
            self.resume()
            self._timer.arm(self.timer(self.clock()))  # the reissued commands' deadlines
        else:
            self.unreachable(backoff)
