"""``--poll``: when a server's loop keeps polling rather than sleeping."""

from __future__ import annotations

from earmark.busy_poll import PREEMPTED, REST, Poll

US = 1e-6


def test_a_poll_lasts_the_window_after_the_last_event() -> None:
    poll = Poll(100 * US)
    assert poll.event(0.0)  # the adapter starts turning
    assert poll.turn(5 * US) and poll.turn(10 * US)
    assert not poll.event(50 * US)  # already turning: the window moves on, no second turner
    assert poll.turn(140 * US)  # 90 us after the last event


def test_a_poll_that_ran_out_its_window_stops_polling_for_a_while() -> None:
    """Nothing came in the window (the answer is slower than it): polling did not pay."""
    poll = Poll(100 * US)
    assert poll.event(0.0)
    assert poll.turn(60 * US)
    assert not poll.turn(101 * US)  # 101 us after the last event: sleep
    assert not poll.polling
    assert not poll.event(REST / 2)
    assert poll.event(REST + 1.0)  # the next event after the rest starts again


def test_a_turn_that_was_preempted_stops_polling_for_a_while() -> None:
    """Another process had the CPU: polling there would keep it from the target or the
    application, so none for REST seconds."""
    poll = Poll(1000 * US)
    assert poll.event(0.0)
    assert not poll.turn(PREEMPTED + 10 * US)
    assert not poll.event(REST / 2)
    assert not poll.polling
    assert poll.event(REST + 1.0)
    assert poll.turn(REST + 1.0 + 5 * US)
