"""Two reservation moves the page cache's books use: budget moved straight into another
reservation, and a revolving reservation that gets back what its draws free."""

from __future__ import annotations

import pytest

from earmark.memory import Arena, HostLevel, OverdrawError, ReleaseError


def test_transfer_moves_budget_without_touching_the_arena() -> None:
    arena = Arena(1 << 20)
    src = arena.reserve_now({HostLevel.PAGE: 4096, HostLevel.TASK: 128}, owner="a")
    dst = arena.reserve_now({HostLevel.TASK: 64}, owner="b")
    assert src is not None and dst is not None
    src.transfer(arena.claim({HostLevel.TASK: 128}), dst)
    assert (src.left, dst.left, dst.budget[HostLevel.TASK]) == (4096, 192, 192)
    assert arena.committed == 4096 + 192
    with pytest.raises(OverdrawError):
        src.transfer({HostLevel.TASK: 1}, dst)
    dst.release()
    with pytest.raises(ReleaseError):
        src.transfer({HostLevel.PAGE: 64}, dst)
    src.release()
    assert arena.committed == 0


def test_a_move_that_overdraws_one_level_moves_nothing_and_names_that_level() -> None:
    arena = Arena(1 << 20)
    src = arena.reserve_now({HostLevel.PAGE: 4096, HostLevel.TASK: 128}, owner="a")
    dst = arena.reserve_now({HostLevel.TASK: 64}, owner="b")
    assert src is not None and dst is not None
    before = (list(src.budget), src.left, list(dst.budget), dst.left)
    with pytest.raises(OverdrawError, match="moves 256 B at TASK but has only 128 B"):
        src.transfer({HostLevel.PAGE: 4096, HostLevel.TASK: 256}, dst)
    with pytest.raises(OverdrawError, match="splits off 8 KiB at PAGE but has only 4 KiB"):
        src.split({HostLevel.TASK: 64, HostLevel.PAGE: 8192}, owner="c")
    assert (list(src.budget), src.left, list(dst.budget), dst.left) == before
    assert "c" not in arena.holdings()


def test_a_revolving_reservation_gets_back_what_its_draws_free() -> None:
    arena = Arena(1 << 20)
    res = arena.reserve_now({HostLevel.TASK: 64}, owner="m")
    assert res is not None
    res.revolving = True
    for _ in range(3):  # drawn again and again: it never runs out
        res.charge(HostLevel.TASK, 64).free()
        assert res.left == 64 and arena.committed == 64
    res.revolving = False
    res.charge(HostLevel.TASK, 64).free()  # an ordinary one: gone to the arena
    assert res.left == 0 and arena.committed == 0


def test_reserve_now_into_adds_the_grant_to_another_reservation_or_grants_nothing() -> None:
    arena = Arena(8192)
    books = arena.reserve_now({HostLevel.TASK: 64}, owner="cache")
    assert books is not None
    assert arena.reserve_now_into({HostLevel.PAGE: 4096, HostLevel.TASK: 128}, books,
                                  owner="writer")
    assert (books.budget[HostLevel.PAGE], books.budget[HostLevel.TASK], books.left) == (
        4096, 192, 4288)
    assert arena.committed == 4288 and arena.high_water == 4288
    assert "writer" not in arena.holdings()  # it joined the other holder's at once
    assert not arena.reserve_now_into({HostLevel.PAGE: 4096}, books, owner="writer")
    assert (books.left, arena.committed) == (4288, 4288)  # too big: nothing granted
    books.release()
    with pytest.raises(ReleaseError):
        arena.reserve_now_into({HostLevel.TASK: 64}, books, owner="writer")
    assert arena.committed == 0
