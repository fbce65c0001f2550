"""``--poll``: when a server's loop keeps polling rather than sleeping."""

from __future__ import annotations

from earmark.busy_poll import FIRST_REST, LAST_REST, PREEMPTED, Poll

US = 1e-6


def test_a_poll_lasts_the_window_after_the_last_event() -> None:
    poll = Poll(100 * US)
    assert poll.event(0.0)  # the adapter starts turning
    assert poll.turn(5 * US) and poll.turn(10 * US)
    assert not poll.event(50 * US)  # already turning: the window moves on, no second turner
    assert poll.turn(140 * US)  # 90 us after the last event


def missed(poll: Poll, at: float) -> float:
    """A poll started at ``at`` that ran out its window; when it ended."""
    assert poll.event(at)
    end = at + poll.window + US
    assert not poll.turn(end)
    assert not poll.polling
    return end


def test_a_poll_that_ran_out_its_window_stops_polling_for_a_while() -> None:
    """Nothing came in the window (the answer is slower than it): polling did not pay."""
    poll = Poll(100 * US)
    assert poll.event(0.0)
    assert poll.turn(60 * US)
    assert not poll.turn(101 * US)  # 101 us after the last event: sleep
    assert not poll.polling
    assert not poll.event(101 * US + FIRST_REST / 2)
    assert poll.event(101 * US + FIRST_REST)  # the next event after the rest starts again


def test_each_miss_in_a_row_doubles_the_rest_up_to_the_longest() -> None:
    poll = Poll(100 * US)
    end, rest = missed(poll, 0.0), FIRST_REST
    while rest < LAST_REST:
        assert not poll.event(end + rest * 0.99)
        end, rest = missed(poll, end + rest), min(2 * rest, LAST_REST)
    assert not poll.event(end + LAST_REST * 0.99)  # it stops doubling there
    end = missed(poll, end + LAST_REST)
    assert not poll.event(end + LAST_REST * 0.99)
    assert poll.event(end + LAST_REST)


def test_a_poll_that_paid_brings_the_rest_back_to_the_first() -> None:
    poll = Poll(100 * US)
    end = missed(poll, 0.0)
    end = missed(poll, end + FIRST_REST)  # the second miss rests 2 ms
    at = end + 2 * FIRST_REST
    assert poll.event(at)
    assert poll.turn(at + 10 * US)
    assert not poll.event(at + 50 * US)  # came while polling: paid
    end = at + 50 * US + poll.window + US
    assert not poll.turn(end)
    assert poll.event(end + FIRST_REST)  # a first miss again: 1 ms, not 4


def test_a_turn_that_was_preempted_stops_polling_for_a_while() -> None:
    """Another process had the CPU: polling there would keep it from the target or the
    application, so none for a while."""
    poll = Poll(1000 * US)
    assert poll.event(0.0)
    assert not poll.turn(PREEMPTED + 10 * US)
    assert not poll.event(PREEMPTED + 10 * US + FIRST_REST / 2)
    assert not poll.polling
    assert poll.event(PREEMPTED + 10 * US + FIRST_REST)
    assert poll.turn(PREEMPTED + 10 * US + FIRST_REST + 5 * US)


def test_serving_an_event_is_not_taken_for_losing_the_cpu() -> None:
    """The loop spent its time on the request that came (the event), not on another
    process: the gap to the next turn counts from the event."""
    poll = Poll(1000 * US)
    assert poll.event(0.0)
    assert poll.turn(5 * US)
    assert not poll.event(150 * US)
    assert poll.turn(300 * US)  # 295 us after the last turn, 150 after the event


def test_idle_ends_the_poll_at_the_next_turn_without_a_rest() -> None:
    """Nothing awaited (attach answered the application's last request): the next request
    needs a CPU that polling would keep, so polling stops, and that is no miss."""
    poll = Poll(1000 * US)
    assert poll.event(0.0)
    assert poll.turn(5 * US)
    poll.idle()
    assert poll.polling  # the adapter's turn is still to come
    assert not poll.turn(10 * US)
    assert not poll.polling
    assert poll.event(20 * US)  # no rest: the next request polls at once


def test_an_event_before_the_next_turn_takes_idle_back() -> None:
    poll = Poll(1000 * US)
    assert poll.event(0.0)
    poll.idle()
    assert not poll.event(5 * US)  # came while still turning: the poll goes on
    assert poll.turn(10 * US)


def test_idle_while_not_polling_changes_nothing() -> None:
    poll = Poll(1000 * US)
    poll.idle()
    assert poll.event(0.0)
    assert poll.turn(5 * US)
