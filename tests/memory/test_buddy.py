"""The granule allocator: exact counts, disjoint runs, never short while granules are free."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from earmark.memory.buddy import Block, BuddyAllocator


def _granules(blocks: list[Block]) -> set[int]:
    out: set[int] = set()
    for start, order in blocks:
        run = set(range(start, start + (1 << order)))
        assert not run & out, "a block overlaps another of the same allocation"
        out |= run
    return out


@settings(max_examples=200, deadline=None)
@given(
    granules=st.integers(1, 300),
    ops=st.lists(st.tuples(st.booleans(), st.integers(1, 64), st.integers(0, 10**6)), max_size=80),
)
def test_random_allocate_free_keeps_exact_books(
    granules: int, ops: list[tuple[bool, int, int]]
) -> None:
    alloc = BuddyAllocator(granules)
    live: list[list[Block]] = []
    used: set[int] = set()
    for is_alloc, count, pick in ops:
        if is_alloc and count <= alloc.free_granules:
            blocks = alloc.allocate(count)
            got = _granules(blocks)
            assert len(got) == count
            assert not got & used, "handed out a granule that is in use"
            assert max(got) < granules
            used |= got
            live.append(blocks)
        elif live:
            blocks = live.pop(pick % len(live))
            used -= _granules(blocks)
            alloc.free(blocks)
        assert alloc.free_granules == granules - len(used)
    for blocks in live:
        alloc.free(blocks)
    # Everything coalesced back: one more allocation of the whole arena works.
    assert alloc.free_granules == granules
    assert len(_granules(alloc.allocate(granules))) == granules


def test_fragmented_arena_still_serves_any_count_that_is_free() -> None:
    alloc = BuddyAllocator(16)
    singles = [alloc.allocate(1) for _ in range(16)]
    for blocks in singles[::2]:  # free every other granule: no two free ones are adjacent
        alloc.free(blocks)
    blocks = alloc.allocate(8)
    assert len(blocks) == 8 and _granules(blocks) == set(range(0, 16, 2))


def test_contiguous_when_possible_and_tail_returned() -> None:
    alloc = BuddyAllocator(64)
    blocks = alloc.allocate(3)
    got = sorted(_granules(blocks))
    assert got == list(range(got[0], got[0] + 3))
    assert alloc.free_granules == 61
    assert len(_granules(alloc.allocate(61))) == 61
