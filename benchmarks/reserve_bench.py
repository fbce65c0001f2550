"""Reserve + release round trips against asyncio.Semaphore acquire + release, same run.

Uncontended: one task, nothing else waiting. Contended: 1,000 tasks over room for
ten at a time, each holding across a yield, so nearly every round trip queues.
The ratio is reserve / semaphore, in nanoseconds per round trip; both sides run
the same loop shape on the same event loop.

    python benchmarks/reserve_bench.py [--json] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable

from earmark.memory import Arena, HostLevel

CLAIM: dict[int, int] = {HostLevel.PAGE: 4096, HostLevel.REQUEST: 256, HostLevel.TASK: 64,
                         HostLevel.WIRE: 64}
CLAIM_BYTES = sum(CLAIM.values())
SLOTS = 10
TASKS = 1000


async def reserve_loop(arena: Arena, n: int, hold: bool = False) -> None:
    # Hot paths build their claim once (Arena.claim), as the page cache does.
    claim = arena.claim(CLAIM)
    for _ in range(n):
        res = await arena.reserve(claim, owner="bench")
        if hold:
            await asyncio.sleep(0)
        res.release()


async def reserve_dict_loop(arena: Arena, n: int) -> None:
    for _ in range(n):
        res = await arena.reserve(CLAIM, owner="bench")
        res.release()


async def semaphore_loop(sem: asyncio.Semaphore, n: int, hold: bool = False) -> None:
    for _ in range(n):
        await sem.acquire()
        if hold:
            await asyncio.sleep(0)
        sem.release()


async def contended(make: Callable[[int], Awaitable[None]], per_task: int) -> None:
    await asyncio.gather(*(make(per_task) for _ in range(TASKS)))


def timed(coro_factory: Callable[[], Awaitable[None]]) -> float:
    async def run() -> float:
        start = time.perf_counter_ns()
        await coro_factory()
        return time.perf_counter_ns() - start

    return asyncio.run(run())


def best_of(repeats: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--rounds", type=int, default=200_000, help="uncontended round trips")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    args = parser.parse_args()
    n = args.rounds
    per_task = max(1, n // TASKS)
    total = per_task * TASKS

    def arena() -> Arena:
        return Arena(CLAIM_BYTES * SLOTS, granule=64)

    reserve_ns = best_of(args.repeats, lambda: timed(lambda: reserve_loop(arena(), n))) / n
    dict_ns = best_of(args.repeats, lambda: timed(lambda: reserve_dict_loop(arena(), n))) / n
    semaphore_ns = (
        best_of(args.repeats, lambda: timed(lambda: semaphore_loop(asyncio.Semaphore(1), n))) / n
    )

    def contended_reserve() -> float:
        a = arena()
        return timed(lambda: contended(lambda k: reserve_loop(a, k, hold=True), per_task))

    def contended_semaphore() -> float:
        sem = asyncio.Semaphore(SLOTS)
        return timed(lambda: contended(lambda k: semaphore_loop(sem, k, hold=True), per_task))

    contended_reserve_ns = best_of(args.repeats, contended_reserve) / total
    contended_semaphore_ns = best_of(args.repeats, contended_semaphore) / total
    result = {
        "reserve_ns": round(reserve_ns, 1),
        "semaphore_ns": round(semaphore_ns, 1),
        "ratio": round(reserve_ns / semaphore_ns, 3),
        "contended_reserve_ns": round(contended_reserve_ns, 1),
        "contended_semaphore_ns": round(contended_semaphore_ns, 1),
        "contended_ratio": round(contended_reserve_ns / contended_semaphore_ns, 3),
        "reserve_dict_ns": round(dict_ns, 1),
    }
    if not args.json:
        print(f"uncontended: reserve {reserve_ns:.0f} ns, semaphore {semaphore_ns:.0f} ns, "
              f"ratio {result['ratio']} (claim given as a dict each time: {dict_ns:.0f} ns)")
        print(f"contended ({TASKS} tasks, {SLOTS} slots): reserve {contended_reserve_ns:.0f} ns, "
              f"semaphore {contended_semaphore_ns:.0f} ns, ratio {result['contended_ratio']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
