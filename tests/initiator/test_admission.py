"""The admission rule both engines share, without a socket: claims, and the idle pool.

A command's claim follows the negotiated limits; a finished command's
reservation is kept for the next of its size, handed to whoever takes it,
and never kept once anyone waits, the pool is full, or the device closes.
"""

from __future__ import annotations

import asyncio

import pytest

from earmark.initiator.admission import (
    SENSE_BYTES,
    Admission,
    Admitted,
    command_bytes,
    receive_bytes,
)
from earmark.initiator.errors import InitiatorError
from earmark.iscsi.framing import serialize
from earmark.iscsi.negotiation import SessionParams
from earmark.iscsi.pdu import R2T, ScsiResponse
from earmark.memory import Arena, HostLevel
from earmark.memory.levels import RESPONSE_HEADER_BYTES

PARAMS = SessionParams(target_mrdsl=8192, initiator_mrdsl=8192, max_burst_length=65536)


def admission(capacity: int = 1 << 20) -> Admission:
    adm = Admission(Arena(capacity), "dev")
    adm.negotiated(PARAMS)
    adm.start()
    return adm


def test_claims_follow_the_negotiated_limits_and_are_remembered() -> None:
    adm = admission()
    claim, task, wire = adm.claim(False, 65536)
    assert (task, wire) == command_bytes(PARAMS, False, 65536)
    assert adm.claim(False, 65536)[0] is claim  # the same claim, not a new one
    assert adm.claim(True, 65536)[0] is not claim  # writes cost differently
    assert adm.cost(False, 65536) == {HostLevel.TASK: task, HostLevel.WIRE: wire}
    adm.negotiated(SessionParams(target_mrdsl=8192, initiator_mrdsl=4096))
    assert adm.claim(False, 65536)[0] is not claim
    assert adm.claim(False, 65536)[2] > wire  # smaller Data-In segments: more headers


def test_a_given_back_reservation_is_the_next_ones_under_its_new_owner() -> None:
    adm = admission()
    claim = adm.claim(False, 4096)[0]
    assert adm.take(claim, "a") is None
    res = adm.reserve_now(claim, "a", 4096)
    adm.give_back(claim, res)
    assert adm.idle == [res] and not res.released
    assert adm.arena.reservations_of("a") == []  # kept under the pool's own name
    other = adm.claim(True, 4096)[0]
    assert adm.take(other, "b") is None  # only a claim of exactly its size takes it
    assert adm.take(claim, "b") is res and res.owner == "b"
    assert adm.idle == []


def test_nothing_is_kept_while_anyone_waits_and_all_goes_before_anyone_does() -> None:
    async def main() -> None:
        adm = admission(64 << 10)
        claim = adm.claim(False, 4096)[0]
        kept = [adm.reserve_now(claim, f"c{i}", 4096) for i in range(2)]
        adm.give_back(claim, kept[0])
        arena = adm.arena
        # More than is free, less than free plus idle: the idle one goes at once.
        need = arena.capacity - arena.committed + claim.total // 2
        first = await asyncio.wait_for(arena.reserve({HostLevel.TASK: need}, owner="x"), 1)
        assert kept[0].released and adm.idle == []
        blocked = asyncio.ensure_future(arena.reserve({HostLevel.TASK: need}, owner="y"))
        while not arena.waiting:
            await asyncio.sleep(0)
        adm.give_back(claim, kept[1])  # someone waits: released, not kept
        assert kept[1].released and adm.idle == []
        first.release()
        (await asyncio.wait_for(blocked, 1)).release()

    asyncio.run(main())


def test_the_pool_is_bounded_and_closing_empties_it() -> None:
    adm = admission(8 << 20)
    claim = adm.claim(False, 4096)[0]
    held = [adm.reserve_now(claim, "c", 4096) for _ in range(257)]
    for res in held:
        adm.give_back(claim, res)
    assert len(adm.idle) == 256 and held[-1].released
    adm.stop()
    assert adm.idle == [] and all(res.released for res in held)
    again = adm.reserve_now(claim, "c", 4096)
    adm.give_back(claim, again)  # closing: nothing is kept any more
    assert again.released and adm.arena.committed == 0
    adm.stop()  # idempotent


def test_a_claim_that_does_not_fit_is_an_error_in_words() -> None:
    adm = admission(4096)
    claim = adm.claim(True, 1 << 20)[0]
    with pytest.raises(InitiatorError, match="larger arena"):
        adm.reserve_now(claim, "c", 1 << 20)


def test_an_answer_allocated_on_arrival_has_room_for_sense_only_if_it_is_a_response() -> None:
    response = memoryview(serialize(ScsiResponse(itt=1), False, False)[0])
    r2t = memoryview(serialize(R2T(itt=1), False, False)[0])
    assert receive_bytes(response) == RESPONSE_HEADER_BYTES + SENSE_BYTES
    assert receive_bytes(r2t) == RESPONSE_HEADER_BYTES


def test_an_answer_is_charged_to_its_command_on_arrival_or_the_reader_is_told_to_wait() -> None:
    adm = admission(64 << 10)
    arena = adm.arena
    response = memoryview(serialize(ScsiResponse(itt=1), False, False)[0])
    cmd = Admitted(b"\x28" + bytes(9), 0, memoryview(bytearray(512)), None, "writer")
    assert adm.on_arrival(cmd, response, None) == 0  # reserved with it: nothing to charge
    cmd.rx_buffers = []  # allocated on arrival (the policies without reservations)
    assert adm.on_arrival(cmd, response, None) == 0
    assert len(cmd.rx_buffers) == 1 and arena.committed == receive_bytes(response)
    hog = arena.reserve_now({HostLevel.TASK: arena.capacity - arena.committed}, owner="hog")
    assert hog is not None
    assert adm.on_arrival(cmd, response, None) == receive_bytes(response)  # wait for it
    hog.release()
    granted = arena.allocate_charge_now(HostLevel.WIRE, receive_bytes(response), owner="rx")
    assert granted is not None and adm.on_arrival(cmd, response, granted) == 0
    assert cmd.rx_buffers[-1] is granted and granted.owner == "writer"
    cmd.give_back(adm)
    assert arena.committed == 0 and cmd.rx_buffers is None
    stray = arena.allocate_charge_now(HostLevel.WIRE, 64, owner="rx")
    assert stray is not None and adm.on_arrival(None, response, stray) == 0  # nobody's
    assert arena.committed == 0


def test_a_command_takes_a_kept_reservation_reserves_its_own_or_draws() -> None:
    async def main() -> None:
        adm = admission()
        arena = adm.arena
        first = Admitted(b"\x28" + bytes(9), 0, memoryview(bytearray(4096)), None, "a")
        waiting = adm.admit(first, True)  # nothing kept: the claim is to be waited for
        assert waiting is not None and first.res is None
        await waiting
        assert first.res is not None and first.claim is adm.claim(False, 4096)[0]
        assert first.res.owner == "a" and first.held == ()
        kept = first.res
        first.give_back(adm)
        second = Admitted(b"\x28" + bytes(9), 0, memoryview(bytearray(4096)), None, "b")
        assert adm.admit(second, True) is None  # the kept one, now, without a wait
        assert second.res is kept and kept.owner == "b"
        second.give_back(adm)
        # The caller reserved (reserve False): the command's claim is split off its
        # reservation at once (nothing to await), and rejoins it when the command ends:
        # back to the arena, or to the caller's when that revolves (a mapping's share).
        for revolving in (False, True):
            third = Admitted(b"\x2a" + bytes(9), 0, None, memoryview(bytearray(4096)), "c")
            res = arena.reserve_now(adm.cost(True, 4096), owner="c")
            assert res is not None
            res.revolving = revolving
            committed, idle = arena.committed, adm.idle
            with res.active():
                assert adm.admit(third, False) is None
            claim = adm.claim(True, 4096)[0]
            assert third.res is not None and third.res.budget == claim.amounts
            assert res.left == 0 and third.held == () and third.rx_buffers is None
            third.give_back(adm)
            assert third.res is None and adm.idle == idle  # never pooled: not its own
            assert res.left == (claim.total if revolving else 0)
            assert arena.committed == committed - (0 if revolving else claim.total)
            res.release()

    asyncio.run(main())


def test_without_reservations_a_command_draws_and_its_answers_come_on_arrival() -> None:
    async def main() -> None:
        adm = Admission(Arena(1 << 20), "dev", reserves=False)
        adm.negotiated(PARAMS)
        cmd = Admitted(b"\x28" + bytes(9), 0, memoryview(bytearray(4096)), None, "a")
        drawn = adm.admit(cmd, True)
        assert drawn is not None
        await drawn
        assert cmd.res is None and cmd.claim is None
        assert len(cmd.held) == 1 and cmd.rx_buffers == []  # WIRE comes as PDUs arrive
        cmd.give_back(adm)
        assert adm.arena.committed == 0

    asyncio.run(main())


def test_a_blocking_command_holds_a_kept_reservation_or_one_reserved_at_once() -> None:
    adm = admission()
    claim, res = adm.hold_now(True, 4096, "a")
    assert claim is adm.claim(True, 4096)[0] and res.owner == "a" and adm.idle == []
    adm.give_back(claim, res)
    again, kept = adm.hold_now(True, 4096, "b")
    assert again is claim and kept is res and kept.owner == "b"
    adm.give_back(claim, kept)
    tight = admission(4096)
    with pytest.raises(InitiatorError, match="larger arena"):
        tight.hold_now(True, 1 << 20, "c")
