"""`earmark check`'s throttle looks when Linux's balance_dirty_pages_ratelimited would;
every expected value is worked out by hand from the rule (mm/page-writeback.c)."""

from __future__ import annotations

from earmark.check.model import Config, State, initial, steps
from earmark.host.policy import Policy


def dirty_as(config: Config, state: State, writer: int) -> State | None:
    """`writer` dirties its next page, or None when it cannot (it waits)."""
    for words, nxt in steps(config, state):
        if words.startswith(f"writer-{writer} dirties"):
            return nxt
    return None


def test_the_pause_after_a_look_is_the_square_root_of_the_margin() -> None:
    config = Config(Policy.THROTTLE, writers=1, pages=6, arena=100, writebacks=1,
                    dirty_limit=8, ratelimit=1)
    state = initial(config)
    seen = []
    for _ in range(6):
        got = dirty_as(config, state, 0)
        assert got is not None
        state = got
        seen.append((state.since_check[0], state.pause[0]))
    # page 1: no look yet (pause 1, nothing dirtied); page 2: looks at 1 dirty, 7 left,
    # 1 << (ilog2(7) >> 1) = 2; page 4: looks at 3, 5 left, 2 again; page 6: looks at
    # 5, 3 left, 1 << (1 >> 1) = 1.
    assert seen == [(1, 1), (1, 2), (2, 2), (1, 2), (2, 2), (1, 1)]


def test_above_the_limit_a_writer_looks_within_8_pages() -> None:
    config = Config(Policy.THROTTLE, writers=1, pages=30, arena=200, writebacks=1,
                    dirty_limit=2, ratelimit=20)
    state = initial(config)
    dirtied = 0
    while (got := dirty_as(config, state, 0)) is not None:
        state, dirtied = got, dirtied + 1
    # 3 pages put the count above 2; from then on the pause is min(20, 8): the look at
    # the 9th page finds 8 dirty and waits (nothing was written back).
    assert dirtied == 8 and state.dirty == 8


def test_the_shared_counter_makes_whoever_reaches_it_look() -> None:
    config = Config(Policy.THROTTLE, writers=4, pages=5, arena=200, writebacks=1,
                    dirty_limit=100, ratelimit=30)
    state = initial(config)
    for n in range(16):  # round robin: 4 pages each, nobody near its own 30
        got = dirty_as(config, state, n % 4)
        assert got is not None
        state = got
    assert state.shared == 16 and state.since_check == (4, 4, 4, 4)
    got = dirty_as(config, state, 0)
    assert got is not None
    # 16 pages since anyone looked: max(100 // 32, 16) reached, so writer-0 looks at 16
    # dirty, 84 left: 1 << (ilog2(84) >> 1) = 1 << 3 = 8.
    assert got.shared == 1 and got.since_check == (1, 4, 4, 4)
    assert got.pause == (8, 30, 30, 30)
