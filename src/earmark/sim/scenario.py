"""One simulated run from one seed: the configuration it draws, the run, and its oracles.

A seed draws everything a run is (swarm testing: each seed its own configuration,
since fixed configurations miss the rare deadlocks): writers 1..4096, host arena,
pages, link latency, jitter, bandwidth, window and send buffer, target memory,
backing latency, a fault mix and a schedule. The run is the real page cache,
initiator and target on a virtual-time loop (:mod:`earmark.sim.stacks`), and
its oracles are checked every time, whatever the policy:

- no stall under ``reserve``: a deadlock there is a failure, with its cycle;
- the host arena is never exceeded (its high-water mark against its capacity);
- no acknowledged and flushed write is lost: once fsync returned, the target's
  disk holds, for every page, the last write acknowledged (the reference model
  is what the writers were told was written);
- a disk with a volatile write cache keeps its contract through every crash
  (:mod:`earmark.sim.disk_model`'s rule), and a crash that lost acknowledged
  writes no flush had covered is reported by fsync (``cache-lost``), not hidden;
- reads return the latest acknowledged write: a sample of the pages read back
  through a new session;
- the run ends within a bound of virtual time (faults stop, work finishes).

Same seed, same run, same trace hash, in any process.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
import zlib
from dataclasses import asdict, dataclass, field, replace

from earmark.host.policy import HostTuning, Policy
from earmark.host.watermarks import emergency_bytes
from earmark.initiator.errors import CacheLostError, LoginError, SessionLostError
from earmark.memory import Arena
from earmark.memory.levels import PAGE_BYTES
from earmark.runtime.initiator_device import BlockDevice
from earmark.scsi.sense import ScsiError, SenseKey
from earmark.sim.disk import Disk
from earmark.sim.disk_model import DiskModel
from earmark.sim.faults import LinkFaults
from earmark.sim.links import LinkShape, Trace
from earmark.sim.schedule import ReadyQueue, Schedule
from earmark.sim.stacks import SimStack
from earmark.sim.virtualtime import run_virtual
from earmark.sim.volatile import Loss, VolatileCache
from earmark.sim.workload import RunResult, Workload, run_writers
from earmark.target.backing import Backing

__all__ = ["Outcome", "Scenario", "Violation", "run_scenario"]

#: The LUN every run writes to: a page or more for each of up to 4096 writers.
LUN_BYTES = 16 << 20
#: Pages read back through a new session at most (the disk itself is checked whole).
READ_SAMPLE = 32
#: What a seed draws pages and host arenas (MiB) from: in full, and `quick`.
_PAGES = {False: (256, 4096), True: (320, 1024)}
_ARENAS_MIB = {False: (2, 3, 4, 6, 8), True: (2, 2, 3, 3, 4)}
#: How an I/O error of the target's disk reaches the initiator.
_DISK_FAILED = (SenseKey.MEDIUM_ERROR, SenseKey.HARDWARE_ERROR)
#: A partition that outlasts the initiator's NOP-Out timeout (5 s idle, then 10 s): it
#: declares the connection dead, and then either logs in again once the partition heals
#: or, past its reconnect timeout, gives the session up (which the writers must hear).
_LONG_CUT_S = (16.0, 24.0)
#: Logins a device may try again after losing its connection (a reset, a timeout).
_ATTEMPTS = 5
#: The bound of virtual time a run may take: past it, something never finished.
HORIZON_S = 600.0


class Violation(enum.Enum):
    """What an oracle found; a deadlock under a policy other than reserve is an outcome,
    not a violation (that is what those policies are for)."""

    STALL = "stall under reserve"
    ARENA = "arena exceeded"
    LOST = "acknowledged write lost"
    STALE_READ = "read not the latest acknowledged write"
    UNBOUNDED = "did not finish in bounded time"
    DURABLE = "disk read older than its last flush, or never written"
    ERROR = "the run failed"


@dataclass(frozen=True, slots=True)
class Scenario:
    seed: int
    policy: Policy
    writers: int
    total_pages: int
    arena_bytes: int
    link: LinkShape
    target_memory: int
    disk: Disk | None
    schedule: Schedule
    #: When the initiator's connection is reset (virtual s): it must reconnect and redo.
    resets: tuple[float, ...] = ()
    #: When the target crashes and restarts (virtual s): the same, to a target that forgot.
    crashes: tuple[float, ...] = ()
    #: The target's disk has a volatile write cache, and a crash loses this of it (None:
    #: write-through).
    cache: Loss | None = None

    @classmethod
    def draw(cls, seed: int, policy: Policy, *, faults: bool = True, resets: bool = True,
             io_errors: bool = True, timeouts: bool = True, crashes: bool = True,
             volatile: bool = True, quick: bool = False) -> Scenario:
        """The run seed `seed` stands for (the same for every policy, so they compare);
        `quick`: fewer pages in smaller arenas (still past what the arena holds), for a
        swarm that must be short."""
        rng = random.Random(seed)
        writers = min(4096, int(2 ** rng.uniform(0, 12)))
        latency = _log_uniform(rng, 20e-6, 5e-3)
        spikes, partitions, slow_disk = (faults and rng.random() < 0.3 for _ in range(3))
        link = LinkShape(
            latency=latency,
            bandwidth=_log_uniform(rng, 10e6, 2.5e9),
            jitter=rng.choice((0.0, latency * rng.random())),
            window=rng.choice((0, int(_log_uniform(rng, 16 << 10, 4 << 20)))),
            sndbuf=int(_log_uniform(rng, 4 << 10, 1 << 20)),
            faults=LinkFaults.draw(rng, 5.0, spikes=spikes, partitions=partitions),
            seed=seed,
        )
        disk = Disk(_log_uniform(rng, 10e-6, 5e-3), rng.random() * 0.02 * slow_disk,
                    rng.uniform(0.01, 0.3), seed) if rng.random() < 0.5 else None
        scenario = cls(
            seed=seed, policy=policy, writers=writers,
            total_pages=max(writers, int(_log_uniform(rng, *_PAGES[quick]))),
            arena_bytes=rng.choice(_ARENAS_MIB[quick]) << 20,
            link=link,
            target_memory=rng.choice((16, 32, 64, 128)) << 20,
            disk=disk,
            schedule=rng.choice(list(Schedule)),
            # Drawn last, so that the draws above stay what they were before these came.
            resets=tuple(sorted(rng.uniform(0, 0.5) for _ in range(rng.randint(1, 2))))
            if faults and resets and rng.random() < 0.3 else (),
        )
        if disk is not None and faults and io_errors and rng.random() < 0.2:
            scenario = replace(scenario, disk=replace(disk, error_p=_log_uniform(rng, 1e-4, 1e-2)))
        if faults and timeouts and rng.random() < 0.1:  # long enough for NOP-Out to time out
            at = rng.uniform(0.0, 0.3)
            cuts = (*link.faults.partitions, (at, at + rng.uniform(*_LONG_CUT_S)))
            scenario = replace(scenario, link=replace(link, faults=replace(
                link.faults, partitions=tuple(sorted(cuts)))))
        if faults and crashes and rng.random() < 0.1:
            scenario = replace(scenario, crashes=(rng.uniform(0.0, 0.3),))
            if volatile:
                scenario = replace(scenario, cache=rng.choice(list(Loss)))
        return scenario

    def arena(self) -> Arena:
        emergency = emergency_bytes(self.arena_bytes) if self.policy is Policy.MEMPOOL else 0
        return Arena(self.arena_bytes, emergency=emergency, name="host arena")

    def as_json(self) -> dict[str, object]:
        out = asdict(self)
        out["policy"], out["schedule"] = self.policy.value, self.schedule.value
        out["cache"] = None if self.cache is None else self.cache.value
        return out


@dataclass(slots=True)
class Outcome:
    seed: int
    policy: str
    #: "completed" | "deadlocked" | "io-error", "session-lost" (reported to the writers) |
    #: "failed"
    outcome: str
    cycle: str | None
    violations: list[Violation]
    lost_writes: int
    mbps: float
    virtual_s: float
    events: int
    trace_hash: str
    reconnects: int = 0
    trace: list[str] | None = field(default=None, repr=False)
    error: str | None = None

    @property
    def failed(self) -> bool:
        return bool(self.violations)

    def as_json(self) -> dict[str, object]:
        return {
            "seed": self.seed, "policy": self.policy, "outcome": self.outcome,
            "cycle": self.cycle, "violations": [v.name for v in self.violations],
            "lost_writes": self.lost_writes, "mbps": round(self.mbps, 3),
            "virtual_s": round(self.virtual_s, 6), "events": self.events,
            "trace_hash": self.trace_hash, "reconnects": self.reconnects, "error": self.error,
        }


def run_scenario(sc: Scenario, *, readable: bool = False) -> Outcome:
    """Run `sc` on a fresh virtual-time loop and check every oracle."""
    trace = Trace(readable=readable)
    ready = ReadyQueue(sc.schedule, sc.seed)
    link = sc.link

    async def main() -> Outcome:
        loop = asyncio.get_running_loop()
        cache: VolatileCache | None = None

        def wrap(medium: Backing) -> Backing:
            nonlocal cache
            inner: Backing = medium
            if sc.cache is not None:
                inner = cache = VolatileCache(medium, sc.cache, sc.seed, DiskModel())
            return inner if sc.disk is None else sc.disk.backing(inner)

        async with SimStack(LUN_BYTES, wrap=wrap, memory=sc.target_memory,
                            power_on=sc.cache is not None) as stack:
            try:
                async with asyncio.timeout(HORIZON_S):
                    return await _checked(sc, stack, trace, cache)
            except (SessionLostError, LoginError):
                if _longest_cut(sc) <= _LONG_CUT_S[0]:
                    raise
                # A partition outlasted the initiator's patience: it gave up (the session
                # lost, or the login to open or get it back timed out), and said so.
                return _outcome(sc, trace, "session-lost", None, [], seconds=loop.time())
            except TimeoutError:
                return _outcome(sc, trace, "failed", None, [Violation.UNBOUNDED],
                                seconds=loop.time())

    try:
        return run_virtual(main, ready=ready, trace=trace,
                           disk=None if sc.disk is None else sc.disk.delays(),
                           latency=link.latency, bandwidth=link.bandwidth, jitter=link.jitter,
                           window=link.window, sndbuf=link.sndbuf, faults=link.faults,
                           seed=link.seed)
    except Exception as exc:  # a run that failed is a finding, with its seed to replay
        out = _outcome(sc, trace, "failed", None, [Violation.ERROR], seconds=0.0)
        out.error = f"{type(exc).__name__}: {exc}"
        return out


async def _checked(sc: Scenario, stack: SimStack, trace: Trace,
                   cache: VolatileCache | None) -> Outcome:
    arena = sc.arena()
    violations: list[Violation] = []
    # The watchdog (no memory moved for stall_s) must outwait the longest partition.
    work = Workload(writers=sc.writers, pages_per_writer=max(1, sc.total_pages // sc.writers),
                    span_pages=LUN_BYTES // PAGE_BYTES, seed=sc.seed,
                    stall_s=10.0 + _longest_cut(sc))
    async with stack.open(arena, sc.policy, attempts=_ATTEMPTS) as device:
        resets = asyncio.get_running_loop().create_task(
            _reset(device, stack, sc, cache, violations))
        try:
            result = await run_writers(arena, device, sc.policy, work, HostTuning())
        except ScsiError as exc:
            if sc.disk is None or not sc.disk.error_p or exc.key not in _DISK_FAILED:
                raise
            # The disk failed a write and fsync said so: what is owed, with no claim on
            # the data to check (which pages the failed writes held is not known here).
            return _outcome(sc, trace, "io-error", None, [], seconds=0.0)
        except CacheLostError:
            if cache is None:
                raise
            # The target lost writes it had acknowledged, no flush covering them, and
            # fsync said so: what is owed. The disk itself must still keep its contract.
            owed = _outcome(sc, trace, "cache-lost", None, [*violations, *_broken(cache)],
                            seconds=0.0)
            owed.reconnects = device.reconnects
            return owed
        finally:
            resets.cancel()
        reconnects = device.reconnects
    violations += _broken(cache)
    if result.peak_arena_bytes > arena.capacity:
        violations.append(Violation.ARENA)
    lost = 0
    if result.outcome == "completed":
        lost = _lost_writes(stack, result.expected)
        if lost:
            violations.append(Violation.LOST)
        elif not await _reads_latest(stack, result, sc.seed):
            violations.append(Violation.STALE_READ)
    elif sc.policy is Policy.RESERVE:
        violations.append(Violation.STALL)
    out = _outcome(sc, trace, result.outcome, result.cycle, violations,
                   seconds=result.seconds, mbps=result.mbps)
    out.lost_writes, out.reconnects = lost, reconnects
    return out


async def _reset(device: BlockDevice, stack: SimStack, sc: Scenario,
                 cache: VolatileCache | None, violations: list[Violation]) -> None:
    """Reset the initiator's connection (as a peer's RST would) and crash the target at
    their times (virtual s); after a crash the disk's contract must hold (`violations`)."""
    loop = asyncio.get_running_loop()
    for when, crash in sorted([(t, False) for t in sc.resets] + [(t, True) for t in sc.crashes]):
        await asyncio.sleep(max(0.0, when - loop.time()))
        stream = device.stream
        if crash:
            await stack.crash(cache)
            violations += _broken(cache)
        elif stream is not None and stream.transport is not None:
            stream.transport.abort()


def _broken(cache: VolatileCache | None) -> list[Violation]:
    """DURABLE if a page of the disk, read as the target would, breaks the model's rule."""
    if cache is None:
        return []

    def read(index: int) -> bytes:
        page = bytearray(PAGE_BYTES)
        cache.readinto(index * PAGE_BYTES, [memoryview(page)])
        return bytes(page)

    return [Violation.DURABLE] if cache.model.broken(read) else []


def _lost_writes(stack: SimStack, expected: dict[int, int]) -> int:
    """Pages whose content on the target's disk is not the last acknowledged write."""
    page = bytearray(PAGE_BYTES)
    view = [memoryview(page)]
    lost = 0
    for index, crc in expected.items():
        stack.backing.readinto(index * PAGE_BYTES, view)
        lost += zlib.crc32(page) != crc
    return lost


async def _reads_latest(stack: SimStack, result: RunResult, seed: int) -> bool:
    pages = sorted(result.expected)
    sample = random.Random(seed).sample(pages, min(READ_SAMPLE, len(pages)))
    return await stack.verify({index: result.expected[index] for index in sample})


def _outcome(sc: Scenario, trace: Trace, outcome: str, cycle: str | None,
             violations: list[Violation], *, seconds: float, mbps: float = 0.0) -> Outcome:
    return Outcome(seed=sc.seed, policy=sc.policy.value, outcome=outcome, cycle=cycle,
                   violations=violations, lost_writes=0, mbps=mbps, virtual_s=seconds,
                   events=trace.events, trace_hash=trace.hexdigest(), trace=trace.lines)


def _longest_cut(sc: Scenario) -> float:
    return max((end - start for start, end in sc.link.faults.partitions), default=0.0)


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))
