"""The page cache, earmark's initiator and target (both under `reserve`) on real TCP, through
a seeded fault-injecting proxy (tests/fault_proxy.py): delay and jitter, a bandwidth cap, a
stall, a reset, and a path dead one way.

Under each: no deadlock (the workload's detector and watchdog, and a bound on the whole);
every page written before the final fsync reads back through a fresh session straight to
the target; neither arena went past its capacity (the host's under the level validator),
and the target's returns to its idle figure; and, for the faults that stop the traffic,
the initiator's own recovery (a timeout, then a new session) is what ended it: its
counters say it reconnected and the proxy says the initiator, not the fault running
out, closed the faulty connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import pytest

from earmark.host.policy import Policy
from earmark.initiator.errors import SessionLostError
from earmark.initiator.failure import ConnectionFailed, FailureKind
from earmark.initiator.session import Timeouts
from earmark.memory import Arena, check_level_order
from earmark.memory.levels import PAGE_BYTES
from earmark.runtime.embedded import EmbeddedTarget
from earmark.runtime.initiator_device import BlockDevice
from earmark.sim.workload import Workload, run_writers
from earmark.target.backing import MemoryBacking
from tests.arena_settled import arena_settled
from tests.fault_proxy import End, Fault, FaultProxy, Plan

pytestmark = pytest.mark.tcp

LUN_BYTES = 4 << 20
HOST_ARENA = 2 << 20
TARGET_ARENA = 8 << 20
#: Generous: a run takes a few seconds; this only turns a hang into a failure.
BOUND_S = 60.0
#: Short, so that recovery from a stall takes about a second, not the default minute;
#: the keepalive out of the way (past the bound), so that what ends each stall is the
#: command timeout, the ABORT TASK going unanswered, and a new session.
QUICK = Timeouts(command=0.5, nop_interval=10 * BOUND_S, nop_timeout=10 * BOUND_S, abort=0.5)
#: For the faults that only slow the traffic: no recovery is wanted there.
PATIENT = Timeouts(command=20.0, nop_interval=5.0, nop_timeout=20.0, abort=10.0)
WORK = Workload(writers=8, pages_per_writer=96, span_pages=LUN_BYTES // PAGE_BYTES, stall_s=30)


@dataclass(frozen=True)
class Outcome:
    expected: dict[int, int] = field(repr=False)
    #: Why the initiator last lost its connection before the close (None: it never did).
    lost: ConnectionFailed | None
    reconnects: int
    aborts: int
    proxy: FaultProxy


@asynccontextmanager
async def _through(target: EmbeddedTarget, plan: Plan, timeouts: Timeouts,
                   reconnect_timeout: float = 20) -> AsyncIterator[tuple[BlockDevice, FaultProxy]]:
    """A device on a small host arena (under the level validator), connected through the
    proxy, within the bound; closed at the end."""
    arena = Arena(HOST_ARENA)
    arena.validator = check_level_order
    async with FaultProxy("127.0.0.1", target.server.port, plan) as proxy:
        device = BlockDevice(proxy.url_of(target.url), arena=arena, policy=Policy.RESERVE,
                             timeouts=timeouts, login_timeout=1,
                             reconnect_timeout=reconnect_timeout, max_attempts=4)
        async with asyncio.timeout(BOUND_S):
            await device.connect()
            try:
                yield device, proxy
            finally:
                await device.close()
    assert arena.high_water <= arena.capacity, proxy


async def _run(target: EmbeddedTarget, plan: Plan, timeouts: Timeouts) -> Outcome:
    async with _through(target, plan, timeouts) as (device, proxy):
        result = await run_writers(device.arena, device, Policy.RESERVE,
                                   replace(WORK, seed=plan.seed))
        lost = device.failure  # before the close adds its own
    assert result.outcome == "completed", (result.cycle, proxy)
    assert result.expected, proxy
    return Outcome(result.expected, lost, device.reconnects, device.aborts, proxy)


async def _read_back(target: EmbeddedTarget, expected: dict[int, int]) -> dict[int, int]:
    """Each page's crc as a new session, straight to the target, reads it."""
    async with BlockDevice(target.url, arena=Arena(4 << 20)) as fresh:
        return {index: zlib.crc32(await fresh.read(index * PAGE_BYTES, PAGE_BYTES))
                for index in expected}


def _check(target: EmbeddedTarget, plan: Plan, timeouts: Timeouts) -> Outcome:
    idle = target.arena.committed  # no session yet

    async def main() -> tuple[Outcome, dict[int, int], int]:
        out = await _run(target, plan, timeouts)
        got = await _read_back(target, out.expected)
        with contextlib.suppress(TimeoutError):
            await arena_settled(target, idle)
        return out, got, target.arena.committed

    out, got, settled = asyncio.run(main())
    proxy = out.proxy
    bad = sorted(index for index, crc in out.expected.items() if got[index] != crc)
    assert not bad, f"pages {bad[:10]} did not read back ({len(bad)} of them): {proxy}"
    assert target.deadlock is None, (target.deadlock, proxy)
    assert target.arena.high_water <= target.arena.capacity, proxy
    assert settled == idle, f"target arena at {settled} B, idle at {idle} B: {proxy}"
    return out


@pytest.fixture
def target(embedded_targets: Callable[..., EmbeddedTarget]) -> EmbeddedTarget:
    return embedded_targets(MemoryBacking(LUN_BYTES), memory=TARGET_ARENA)


@pytest.mark.parametrize("plan", [
    pytest.param(Plan(seed=11, delay_s=0.002, jitter_s=0.004), id="delay-jitter-seed11"),
    pytest.param(Plan(seed=12, rate_bytes_s=4 << 20), id="cap-4MiBps-seed12"),
])
def test_delay_jitter_and_a_bandwidth_cap_slow_it_and_change_nothing(
    target: EmbeddedTarget, plan: Plan
) -> None:
    out = _check(target, plan, PATIENT)
    proxy = out.proxy
    assert (out.reconnects, out.aborts, out.lost) == (0, 0, None), proxy
    assert len(proxy.links) == 1 and proxy.bytes_to_target >= LUN_BYTES // 4, proxy


@pytest.mark.parametrize("plan", [
    pytest.param(Plan(seed=21, fault=Fault.STALL), id="stall-seed21"),
    pytest.param(Plan(seed=22, fault=Fault.DEAD_TO_TARGET), id="dead-to-target-seed22"),
    pytest.param(Plan(seed=23, fault=Fault.DEAD_TO_INITIATOR), id="dead-to-initiator-seed23"),
])
def test_a_path_that_stops_is_given_up_on_by_the_initiator_which_reconnects(
    target: EmbeddedTarget, plan: Plan
) -> None:
    out = _check(target, plan, QUICK)
    proxy = out.proxy
    assert proxy.hits == [0], proxy
    hit = proxy.links[0]
    assert hit.ended.result() is End.INITIATOR and not hit.stall_ran_out, proxy
    assert out.reconnects >= 1, proxy
    assert out.lost is not None and out.lost.kind is FailureKind.TIMEOUT, (out.lost, proxy)


def test_a_reset_reaches_the_initiator_which_reconnects(target: EmbeddedTarget) -> None:
    plan = Plan(seed=31, fault=Fault.RESET)
    out = _check(target, plan, QUICK)
    proxy = out.proxy
    assert proxy.hits == [0] and proxy.links[0].ended.result() is End.RESET, proxy
    assert out.reconnects >= 1, proxy
    assert out.lost is not None and out.lost.kind is FailureKind.CLOSED, (out.lost, proxy)


@pytest.mark.parametrize("plan", [
    pytest.param(Plan(seed=42, fault=Fault.RESET, strikes=3), id="reset-seed42"),
    pytest.param(Plan(seed=43, fault=Fault.DEAD_TO_TARGET, strikes=2), id="dead-to-target-seed43"),
    pytest.param(Plan(seed=45, fault=Fault.RESET, strikes=3, again_after=(0, 400)),
                 id="reset-in-login-seed45"),
    pytest.param(Plan(seed=46, fault=Fault.STALL, strikes=2, again_after=(0, 400)),
                 id="stall-in-login-seed46"),
])
def test_a_fault_that_hits_the_reconnects_too_is_outlasted(
    target: EmbeddedTarget, plan: Plan
) -> None:
    """The fault hits the next connections too: in the login (points below 400 B fall in
    the login request), or in the commands sent again on the new session, whose own
    timeouts must then end it: a new session that did not time its reissued commands
    out waited for a keepalive that QUICK puts past the bound."""
    out = _check(target, plan, QUICK)
    proxy = out.proxy
    assert proxy.hits == list(range(plan.strikes)), proxy
    assert len(proxy.links) > plan.strikes, proxy
    end = End.RESET if plan.fault is Fault.RESET else End.INITIATOR
    assert [proxy.links[i].ended.result() for i in proxy.hits] == [end] * plan.strikes, proxy
    assert not any(proxy.links[i].stall_ran_out for i in proxy.hits), proxy
    assert out.reconnects >= 1, proxy


def test_a_target_lost_for_good_fails_the_fsync_and_frees_the_writers(
    target: EmbeddedTarget,
) -> None:
    """Every connection after the first is reset in its login, so the device gives up
    (reconnect_timeout): the writebacks it fails must end as a failed fsync, not as
    pages under writeback for good with the writers waiting for them."""
    plan = Plan(seed=51, fault=Fault.RESET, strikes=1 << 30, again_after=(0, 1))
    idle = target.arena.committed

    async def main() -> FaultProxy:
        async with _through(target, plan, QUICK, reconnect_timeout=1) as (device, proxy):
            with pytest.raises(SessionLostError, match="not re-established"):
                await run_writers(device.arena, device, Policy.RESERVE,
                                  replace(WORK, seed=plan.seed))
        await arena_settled(target, idle)
        return proxy

    proxy = asyncio.run(main())
    assert len(proxy.hits) > 1 and proxy.hits == list(range(len(proxy.links))), proxy
    assert target.arena.high_water <= target.arena.capacity, proxy
