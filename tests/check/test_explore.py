"""The exhaustive checker: reserve has no deadlocking schedule on any small system; the
other policies each have one, found with the shortest schedule, which replays."""

from __future__ import annotations

import itertools
import json

import pytest

from earmark import cli
from earmark.check.explore import explore
from earmark.check.model import FLUSHER, Config, State, initial, is_done, requests_booked, steps
from earmark.host.policy import Policy


def replay(config: Config, trace: tuple[str, ...]) -> None:
    """Follow the schedule step by step: each step is enabled, and the end is stuck."""
    state = initial(config)
    for words in trace:
        state = next(nxt for step, nxt in steps(config, state) if step == words)
    assert not list(steps(config, state)) and not is_done(state)


def test_reserve_never_deadlocks_on_any_schedule() -> None:
    checked = 0
    for writers, pages, arena, writebacks in itertools.product(
            (1, 2, 3), (1, 3, 5), (7, 9, 14, 21, 30), (1, 2, 3)):
        verdict = explore(Config(Policy.RESERVE, writers, pages, arena, writebacks))
        assert verdict.deadlock is None, verdict.summary()
        assert verdict.states > 1
        checked += 1
    assert checked == 135


@pytest.mark.parametrize("config", [
    Config(Policy.NONE, writers=1, pages=4, arena=16),
    Config(Policy.NONE, writers=3, pages=3, arena=21, writebacks=3),
    Config(Policy.MEMPOOL, writers=2, pages=4, arena=20, writebacks=2, emergency=4),
    Config(Policy.THROTTLE, writers=3, pages=4, arena=18, dirty_limit=1, ratelimit=2),
], ids=lambda c: c.policy.value)
def test_the_other_policies_deadlock_on_some_schedule(config: Config) -> None:
    verdict = explore(config)
    assert verdict.deadlock is not None and "units used" in verdict.deadlock
    assert verdict.trace and "DEADLOCK" in verdict.summary()
    replay(config, verdict.trace)


def test_mempool_survives_while_its_pool_covers_every_writeback() -> None:
    """The mechanism's own promise: the pool holds every writeback's request and task
    at once plus one receive buffer, so one writeback can always finish. Every writeback
    counts: the flusher's, and those the writers start themselves in direct reclaim,
    which may use the pool too (PF_MEMALLOC). A pool sized for the flusher's alone, with
    ordinary memory full of dirty pages, leaves every writeback stuck."""
    for writers, arena, writebacks in itertools.product((1, 2, 3), (21, 28), (1, 2, 3)):
        config = Config(Policy.MEMPOOL, writers, 3, arena, writebacks,
                        emergency=2 * (writebacks + writers) + 1)
        assert explore(config).deadlock is None, config
    flusher_only = Config(Policy.MEMPOOL, writers=2, pages=3, arena=21, writebacks=1,
                          emergency=2 * 1 + 1)
    verdict = explore(flusher_only)
    assert verdict.deadlock is not None and "writes a request back itself" in verdict.deadlock
    short = Config(Policy.MEMPOOL, writers=2, pages=3, arena=16 + 4, writebacks=2, emergency=4)
    assert explore(short).deadlock is not None


def test_throttle_survives_one_writer_and_loses_to_many() -> None:
    one = Config(Policy.THROTTLE, writers=1, pages=6, arena=20, dirty_limit=1, ratelimit=1)
    assert explore(one).deadlock is None
    many = Config(Policy.THROTTLE, writers=4, pages=6, arena=20, dirty_limit=1, ratelimit=1)
    assert explore(many).deadlock is not None


def test_bad_systems_are_refused_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="cannot hold even one page"):
        Config(Policy.RESERVE, writers=1, pages=1, arena=6)
    with pytest.raises(ValueError, match="emergency pool"):
        Config(Policy.MEMPOOL, writers=1, pages=1, arena=8, emergency=8)
    code = cli.main(["check", "--policy", "reserve", "--arena", "5"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "cannot hold even one page" in err


def test_cli_one_system_and_the_sweep(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--policy", "none", "--writers", "2", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["deadlock"] and len(result["trace"]) == len(out) - 2
    assert cli.main(["check", "--sweep", "--json"]) == 0
    sweep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sweep["reserve"]["deadlocked"] == 0 and sweep["reserve"]["systems"] > 100
    assert all(sweep[p]["deadlocked"] > 0 for p in ("none", "mempool", "throttle"))


def reachable(config: Config) -> list[State]:
    seen = {initial(config)}
    todo = list(seen)
    while todo:
        for _, nxt in steps(config, todo.pop()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return list(seen)


@pytest.mark.parametrize(("writers", "pages", "arena", "merge"), [
    (2, 3, 14, 2), (3, 2, 18, 3), (2, 4, 22, 4), (3, 3, 30, 2), (1, 5, 16, 4)])
def test_reserve_with_merging_books_one_fixed_part_per_request_and_never_deadlocks(
        writers: int, pages: int, arena: int, merge: int) -> None:
    """On every reachable state, what reserve holds is exactly its pages and one fixed
    part per request (dirty runs and requests in flight); merged requests and bridges
    do happen; and no schedule gets stuck."""
    config = Config(Policy.RESERVE, writers, pages, arena, writebacks=2, merge=merge)
    states = reachable(config)
    for state in states:
        assert state.used == requests_booked(config, state), state
    assert any(n > 1 for state in states for _, n, _ in state.slots)
    assert explore(config).deadlock is None


@pytest.mark.parametrize("config", [
    Config(Policy.NONE, writers=2, pages=4, arena=20, merge=2),
    Config(Policy.MEMPOOL, writers=2, pages=4, arena=20, emergency=4, merge=2),
    Config(Policy.THROTTLE, writers=3, pages=4, arena=18, dirty_limit=1, ratelimit=2, merge=2),
], ids=lambda c: c.policy.value)
def test_with_merging_the_other_policies_still_deadlock(config: Config) -> None:
    verdict = explore(config)
    assert verdict.deadlock is not None, verdict.summary()
    assert "requests of up to 2 pages" in verdict.summary()
    replay(config, verdict.trace)


@pytest.mark.parametrize(("used", "writes_back"), [(12, True), (17, False)])
def test_a_writer_writes_back_itself_only_while_half_the_pool_is_free(
        used: int, writes_back: bool) -> None:
    """Memory short of the pool (12 of 20 units, pool 8) is three dirty pages. A writer
    whose fourth page does not fit writes one back itself while more than 4 units are
    free; with 3 free (a writeback holding 5 of the pool) it is throttled and only
    waits (Linux's allow_direct_reclaim)."""
    config = Config(Policy.MEMPOOL, writers=1, pages=4, arena=20, writebacks=1, emergency=8)
    slots = () if used == 12 else ((2, 1, FLUSHER),)
    state = State((1,), (0,), (1,), 0, 3 if used == 12 else 2, slots, used)
    words = [w for w, _ in steps(config, state)]
    assert any("back itself" in w for w in words) is writes_back, words
