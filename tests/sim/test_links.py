"""The simulated network's model without a loop: arrival times, paused readers, listeners."""

from __future__ import annotations

import pytest

from earmark.sim.links import FIRST_PORT, Inbox, Link, Listeners


def test_bytes_leave_in_order_when_the_link_is_free_and_arrive_latency_later() -> None:
    link = Link(latency=0.002, bandwidth=1e6)
    assert link.send(0.0, 1000) == pytest.approx(0.003)  # 1 ms on the wire + 2 ms
    # Written while the first is still leaving: it queues behind it.
    assert link.send(0.0005, 1000) == pytest.approx(0.004)
    # Written once the link is idle again: leaves at once.
    assert link.send(1.0, 500) == pytest.approx(1.0025)


def test_the_end_of_the_stream_arrives_after_what_was_written_before_it() -> None:
    link = Link(latency=0.001, bandwidth=1e3)
    link.send(0.0, 10)  # leaves at 10 ms
    assert link.end(0.0) == pytest.approx(0.011)
    assert link.end(5.0) == pytest.approx(5.001)
    assert link.handshake() == pytest.approx(0.002)


@pytest.mark.parametrize(("latency", "bandwidth"), [(-1.0, 1e6), (0.0, 0.0)])
def test_a_link_needs_a_latency_and_a_bandwidth(latency: float, bandwidth: float) -> None:
    with pytest.raises(ValueError, match="latency >= 0 and bandwidth > 0"):
        Link(latency, bandwidth)


def test_a_paused_reader_leaves_arrivals_queued_until_it_resumes() -> None:
    inbox = Inbox()
    assert inbox.arrive(b"a")  # a reading reader is handed it now
    assert list(inbox.chunks()) == [b"a"]
    inbox.paused = True
    assert not inbox.arrive(b"b") and not inbox.arrive(b"c")
    assert list(inbox.chunks()) == []
    assert inbox.resume() and inbox.draining  # a hand-over is due
    assert not inbox.arrive(b"d")  # queued behind the hand-over already due
    taken = inbox.chunks()
    assert next(taken) == b"b"
    inbox.unread(b"rest of b")  # the reader took part of it, then paused
    inbox.paused = True
    assert list(taken) == []
    assert not inbox.draining
    assert inbox.resume() and list(inbox.chunks()) == [b"rest of b", b"c", b"d"]
    assert not inbox.resume()  # not paused: nothing to schedule


def test_a_reset_drops_what_was_queued() -> None:
    inbox = Inbox()
    inbox.paused = True
    inbox.arrive(b"lost")
    inbox.reset()
    assert not inbox and not inbox.resume()


def test_listeners_hand_out_ports_refuse_the_unknown_and_keep_addresses_unique() -> None:
    listeners: Listeners[str] = Listeners()
    assert listeners.listen("h", 0, "first") == ("h", FIRST_PORT)
    assert listeners.listen("h", 3260, "iscsi") == ("h", 3260)
    with pytest.raises(OSError, match="already in use"):
        listeners.listen("h", 3260, "again")
    assert listeners.connect("h", 3260) == "iscsi"
    assert listeners.port() == FIRST_PORT + 1
    listeners.unlisten(("h", 3260))
    with pytest.raises(ConnectionRefusedError, match="nothing listens on h:3260"):
        listeners.connect("h", 3260)
