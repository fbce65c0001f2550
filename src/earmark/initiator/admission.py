"""What a command must hold before it is issued, and the reservations kept between commands.

Under ``reserve`` a command is admitted only once one claim covers its task
descriptor and Data-Out headers (TASK) and every receive buffer it can cause,
R2Ts, Data-In headers and a response with sense (WIRE), computed from the
negotiated limits (:func:`command_bytes`). Both engines ask here for the claim
and give the reservation back here when the status has come; they differ only
in how they get a new one (the asyncio engine awaits ``Arena.reserve``, the
blocking engine, with no loop to wait on, asks ``Arena.reserve_now``).

A finished command's reservation is kept for the next command of its size, so
a caller that issues again at once does not ask the arena each time. It is kept
only while nobody waits for memory: the pool is the arena's shrinker (dropped
before anyone waits), and nothing is pooled while anyone does, so an idle
reservation is never what a waiter waits for (no progress of ours would
release it). Idle reservations are held by a name of their own, so that no task
seems to hold them while it waits.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from typing import Any

from earmark.initiator.errors import InitiatorError
from earmark.initiator.session import Command
from earmark.iscsi.negotiation import SessionParams
from earmark.iscsi.opcodes import Opcode
from earmark.memory import Arena, HostLevel, Wait, WaitKind
from earmark.memory.allocation import Buffer, Charge
from earmark.memory.arena import format_bytes
from earmark.memory.claim import Claim
from earmark.memory.levels import (
    DATA_OUT_HEADER_BYTES,
    RESPONSE_HEADER_BYTES,
    TASK_DESCRIPTOR_BYTES,
)
from earmark.memory.reservation import Reservation, handed_down

__all__ = ["SENSE_BYTES", "Admission", "Admitted", "command_bytes", "receive_bytes",
           "waits_for_answers"]

SENSE_BYTES = 256
"""SenseLength (2) + the largest fixed or descriptor sense (252), one granule-aligned run."""
_RESPONSE_BYTES = RESPONSE_HEADER_BYTES + SENSE_BYTES
_SCSI_RESPONSE = int(Opcode.SCSI_RESPONSE)
_IDLE_MAX = 256
"""Idle command reservations a device keeps at most (a few hundred KiB at most)."""
_CLAIMS_MAX = 1024
"""Transfer lengths whose claims are remembered, per direction."""
_ANSWER = "the target's answer"
_HELD_BACK = "the target's answer, which its stalled receiver cannot read"


def command_bytes(params: SessionParams, write: bool, nbytes: int) -> tuple[int, int]:
    """(TASK, WIRE) bytes one command moving ``nbytes`` draws, from the negotiated limits.

    Receive headers are parsed in the connection's receive buffer and sense is
    a few bytes, so WIRE is charged at its nominal size, like the descriptors
    (memory/levels.py); the reservation is what guarantees it exists.

    Counts are upper bounds: a burst boundary can split a PDU, so each burst
    may add one PDU beyond length / MaxRecvDataSegmentLength.
    """
    bursts = -(-nbytes // params.max_burst_length)
    if write:
        pdus = -(-nbytes // params.target_mrdsl) + bursts
        task = TASK_DESCRIPTOR_BYTES + pdus * DATA_OUT_HEADER_BYTES
        headers = bursts  # R2Ts
    else:
        task = TASK_DESCRIPTOR_BYTES
        headers = -(-nbytes // params.initiator_mrdsl) + bursts  # Data-In
    return task, _RESPONSE_BYTES + headers * RESPONSE_HEADER_BYTES


def receive_bytes(bhs: memoryview) -> int:
    """The receive buffer one answer needs when it is allocated on arrival (the policies
    without reservations): a response with room for sense, or a bare header."""
    return _RESPONSE_BYTES if bhs[0] & 0x3F == _SCSI_RESPONSE else RESPONSE_HEADER_BYTES


class Admission:
    """One device's claims by transfer length and its pool of idle command reservations."""

    __slots__ = ("_conn_res", "_holder", "_idle", "_idle_count", "_idle_owner", "_read_claims",
                 "_recv", "_shrinking", "_write_claims", "arena", "closing", "params", "reserves")

    def __init__(self, arena: Arena, name: str, *, reserves: bool = True) -> None:
        """``reserves``: the policy is ``reserve`` (commands and the receive buffer are
        reserved); False: the policies that allocate on demand."""
        self.arena = arena
        self.reserves = reserves
        #: The limits claims are computed from (the last login's).
        self.params = SessionParams()
        #: Nothing is pooled any more: the device is closing.
        self.closing = False
        self._read_claims: dict[int, tuple[Claim, int, int]] = {}
        self._write_claims: dict[int, tuple[Claim, int, int]] = {}
        self._idle: dict[Claim, list[Reservation]] = {}
        self._idle_count = 0
        self._idle_owner = f"{name}/idle@{id(self):x}"
        self._shrinking = False
        self._holder = f"{name}/receive-buffer"
        self._conn_res: Reservation | None = None
        self._recv: Buffer | None = None

    # ------------------------------------------------------------ the connection's

    async def receive_buffer(self, nbytes: int) -> memoryview:
        """The connection's receive buffer, held for the device's life: reserved under
        ``reserve``, else allocated (and so waited for) like any other buffer."""
        if self.reserves:
            res = self._conn_res = await self.arena.reserve({HostLevel.WIRE: nbytes},
                                                            owner=self._holder)
            self._recv = res.take(HostLevel.WIRE, nbytes)
        else:
            self._recv = await self.arena.allocate(HostLevel.WIRE, nbytes, owner=self._holder)
        return self._held_receive_buffer()

    def receive_buffer_now(self, nbytes: int) -> memoryview:
        """The same, reserved at once, for an engine that has nothing to wait on."""
        res = self.arena.reserve_now({HostLevel.WIRE: nbytes}, owner=self._holder)
        if res is None:
            raise InitiatorError(f"the device's arena has no room for a connection's "
                                 f"{format_bytes(nbytes)} receive buffer: give it a larger one")
        self._conn_res, self._recv = res, res.take(HostLevel.WIRE, nbytes)
        return self._held_receive_buffer()

    def _held_receive_buffer(self) -> memoryview:
        # No progress frees it, and the deadlock detector must know that (a holder
        # it thought live would hide every cycle).
        self.arena.waits.set_passive(self._holder, freed_by=(), holds="its receive buffer")
        assert self._recv is not None
        if len(self._recv.segments) != 1:
            raise InitiatorError("the arena is too fragmented for a connection's receive "
                                 "buffer: give the device a larger arena")
        return self._recv.view

    def free_receive_buffer(self) -> None:
        """The device is closed: its receive buffer goes back; idempotent."""
        recv, self._recv = self._recv, None
        if recv is not None:
            recv.free()
        res, self._conn_res = self._conn_res, None
        if res is not None:
            res.release()
        self.arena.waits.clear_passive(self._holder)

    # ------------------------------------------------------------ commands

    @property
    def idle(self) -> list[Reservation]:
        """The reservations kept for the next commands, for whoever inspects the pool."""
        return [res for pooled in self._idle.values() for res in pooled]

    def start(self) -> None:
        """Pool from now on, giving it all back before anyone waits."""
        self.arena.add_shrinker(self.drop_idle)
        self._shrinking = True

    def stop(self) -> None:
        """Give every idle reservation back and pool no more; idempotent."""
        self.closing = True
        self.drop_idle()
        if self._shrinking:
            self._shrinking = False
            self.arena.remove_shrinker(self.drop_idle)

    def negotiated(self, params: SessionParams) -> None:
        """A login agreed on ``params``: claims follow them, so the old ones go."""
        self.params = params
        self._read_claims.clear()
        self._write_claims.clear()
        self.drop_idle()

    def claim(self, write: bool, nbytes: int) -> tuple[Claim, int, int]:
        """(claim, TASK bytes, WIRE bytes) of one command (:func:`command_bytes`)."""
        claims = self._write_claims if write else self._read_claims
        got = claims.get(nbytes)
        if got is not None:
            return got
        task, wire = command_bytes(self.params, write, nbytes)
        got = (self.arena.claim({HostLevel.TASK: task, HostLevel.WIRE: wire}), task, wire)
        if len(claims) < _CLAIMS_MAX:
            claims[nbytes] = got
        return got

    def cost(self, write: bool, nbytes: int) -> Mapping[int, int]:
        """Bytes per level (TASK, WIRE) one command moving ``nbytes`` draws."""
        _, task, wire = self.claim(write, nbytes)
        return {HostLevel.TASK: task, HostLevel.WIRE: wire}

    def admit(self, cmd: Admitted, reserve: bool) -> Coroutine[Any, Any, None] | None:
        """Give ``cmd`` its memory until its status: None when it holds it now, else what
        to await for it (the one place a command waits for memory, holding nothing).

        Under ``reserve`` its own claim, an idle reservation of its size if one is kept
        (held, untouched, from admission to status, exactly the command's lifetime, so
        drawing on it would only add bookkeeping); ``reserve`` False means the caller
        reserved already (it is current): it draws, as under the other policies."""
        write, nbytes = cmd.write_data is not None, cmd.length
        # The remembered claim looked up here, not through claim(): this runs per command.
        got = (self._write_claims if write else self._read_claims).get(nbytes)
        claim, task_bytes, wire_bytes = got or self.claim(write, nbytes)
        if reserve and self.reserves:
            cmd.claim = claim
            res = self.take(claim, cmd.owner)
            if res is None:
                return self._reserve(cmd, claim)
            cmd.res = res
            return None
        return self.draw(cmd, claim, task_bytes, wire_bytes, self.reserves)

    async def _reserve(self, cmd: Admitted, claim: Claim) -> None:
        cmd.res = await self.arena.reserve(claim, owner=cmd.owner)

    def take(self, claim: Claim, owner: str) -> Reservation | None:
        """An idle reservation of exactly ``claim``, now ``owner``'s; None if none is kept."""
        pooled = self._idle.get(claim)
        if not pooled:
            return None
        res = pooled.pop()
        self._idle_count -= 1
        res.owner = owner  # Reservation.handoff, written out: this runs for every command
        return res

    def hold_now(self, write: bool, nbytes: int, owner: str) -> tuple[Claim, Reservation]:
        """The claim of one command and a reservation of it, at once: a kept one, else a new
        one (:meth:`reserve_now`). For an engine with nothing to wait on (a thread's), so a
        claim that does not fit is an error in words, never a hang."""
        got = (self._write_claims if write else self._read_claims).get(nbytes)  # as in admit
        claim = (got or self.claim(write, nbytes))[0]
        return claim, self.take(claim, owner) or self.reserve_now(claim, owner, nbytes)

    def reserve_now(self, claim: Claim, owner: str, nbytes: int) -> Reservation:
        """``claim`` from the arena at once (after :meth:`take` found none); an error in
        words if it does not fit (for an engine that has nothing to wait on)."""
        res = self.arena.reserve_now(claim, owner=owner)
        if res is None:
            raise InitiatorError(
                f"the device's arena cannot hold what one command of {nbytes} B needs "
                f"({format_bytes(claim.total)} of descriptors and receive buffers) beside the "
                f"{format_bytes(self.arena.committed)} it holds: give it a larger arena")
        return res

    def give_back(self, claim: Claim, res: Reservation) -> None:
        """A finished command's reservation: kept for the next command of its size, or
        released when anyone waits, the device closes, or the pool is full."""
        if self.closing or self._idle_count >= _IDLE_MAX or self.arena.waiting:
            res.release()
            return
        res.owner = self._idle_owner  # Reservation.handoff, written out
        pooled = self._idle.get(claim)
        if pooled is None:
            pooled = self._idle[claim] = []
        pooled.append(res)
        self._idle_count += 1

    def draw(self, cmd: Admitted, claim: Claim, task_bytes: int, wire_bytes: int,
             reserved: bool) -> Coroutine[Any, Any, None] | None:
        """Memory for a command that does not reserve its own. When the caller's
        reservation was handed down, the command's ``claim`` is split off it at once (None:
        nothing to await) and held untouched until the status, as a command's own
        reservation is (drawing on it would only add bookkeeping); then it rejoins it
        (:meth:`Admitted.give_back`). Else it is allocated (what to await):
        ``reserved`` means the ``reserve`` policy, whose receive buffers are allocated
        with the rest; under the others they come as the target's PDUs arrive
        (:meth:`on_arrival`)."""
        source = handed_down()
        if source is None:
            return self._allocate(cmd, task_bytes, wire_bytes, reserved)
        cmd.claim = claim
        cmd.res = source.split(claim, cmd.owner)
        cmd.source = source
        return None

    async def _allocate(self, cmd: Admitted, task_bytes: int, wire_bytes: int,
                        reserved: bool) -> None:
        arena, who = self.arena, cmd.owner
        held = [await arena.allocate_charge(HostLevel.TASK, task_bytes, owner=who)]
        if reserved:
            try:
                held.append(await arena.allocate_charge(HostLevel.WIRE, wire_bytes, owner=who))
            except BaseException:
                held[0].free()
                raise
        else:
            cmd.rx_buffers = []
        cmd.held = held

    def on_arrival(self, cmd: Admitted | None, bhs: memoryview, granted: Charge | None) -> int:
        """Charge the receive buffer of the PDU with this BHS to the command it answers,
        if its buffers are allocated on arrival: ``granted`` if the reader waited for it,
        else allocated now as a receive path does (PF_MEMALLOC: the emergency pool
        counts). 0 when the PDU may be parsed, else the bytes the reader must wait for."""
        received = cmd.rx_buffers if cmd is not None else None
        if cmd is None or received is None:  # not a command's, or reserved with it
            if granted is not None:
                granted.free()
            return 0
        if granted is None:
            nbytes = receive_bytes(bhs)
            arena = self.arena
            with arena.memalloc():
                granted = arena.allocate_charge_now(HostLevel.WIRE, nbytes, owner=cmd.owner)
            if granted is None:
                return nbytes
        else:
            granted.handoff(cmd.owner)
        received.append(granted)
        return 0

    def drop_idle(self) -> None:
        """Release every idle reservation (someone is about to wait, or we close)."""
        idle, self._idle = self._idle, {}
        self._idle_count = 0
        for pooled in idle.values():
            for res in pooled:
                res.release()


class Admitted(Command):
    """A command with the memory it holds while it runs, whichever way it got it."""

    __slots__ = ("claim", "held", "owner", "res", "rx_buffers", "since", "source")

    #: Since when it waits, set as it is submitted.
    since: float

    def __init__(self, cdb: bytes, lun: int, read_into: memoryview | None,
                 write_data: memoryview | list[memoryview] | None, owner: str) -> None:
        Command.__init__(self, cdb, lun, read_into, write_data)
        self.owner = owner
        #: What the command holds under ``reserve``: ``res`` covers ``claim``, reserved
        #: for it, or split off ``source``, the reservation handed down to it.
        self.claim: Claim | None = None
        self.res: Reservation | None = None
        self.source: Reservation | None = None
        #: Drawn at submit: task descriptor and Data-Out headers (and receive buffers
        #: when those were reserved with the command).
        self.held: list[Charge] | tuple[()] = ()
        #: Receive buffers allocated as the target's PDUs arrived; None when they
        #: were drawn at submit, or once the command has given its memory back.
        self.rx_buffers: list[Charge] | None = None

    def drop_rx_buffers(self) -> None:
        """The connection that received them is gone (or the command goes again):
        its buffers go with it."""
        rx_buffers = self.rx_buffers
        if rx_buffers:
            for charge in rx_buffers:
                charge.free()
            rx_buffers.clear()

    def give_back(self, admission: Admission) -> None:
        """The command is over: its reservation to the pool, what it drew freed."""
        res, source = self.res, self.source
        if res is not None:
            self.res = None
            if source is not None:
                self.source = None
                res.rejoin(source)
            else:
                assert self.claim is not None
                admission.give_back(self.claim, res)
        held = self.held
        if held:
            self.held = ()
            for charge in held:
                charge.free()
        if self.rx_buffers is not None:
            self.drop_rx_buffers()
            self.rx_buffers = None  # a late answer to a cancelled command is charged to nobody


def waits_for_answers(commands: list[Admitted], stalled: str | None) -> list[Wait]:
    """Every command's wait for the target, in the deadlock detector's words: for the
    ``stalled`` receiver instead, if any, which must resume before any answer is read."""
    if stalled is None:
        return [Wait(c.owner, WaitKind.EXTERNAL, _ANSWER, since=c.since) for c in commands]
    return [Wait(c.owner, WaitKind.AGENT, _HELD_BACK, (stalled,), since=c.since)
            for c in commands]
