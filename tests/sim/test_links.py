"""The simulated network's model without a loop: arrival times, paused readers, listeners."""

from __future__ import annotations

import pytest

from earmark.sim.faults import LinkFaults
from earmark.sim.links import END, FIRST_PORT, Inbox, Link, LinkShape, Listeners


def _sent(link: Link, now: float, *sizes: int) -> list[tuple[float, int]]:
    for n in sizes:
        link.write(now, b"x" * n)
    return [(at, n) for at, n in _wire(link)]


def _wire(link: Link) -> list[tuple[float, int]]:
    out = []
    while (at := link.wake()) is not None:
        out += [(round(at, 9), len(data)) for data in link.arrived(at)]
    return out


def test_bytes_leave_in_order_when_the_link_is_free_and_arrive_latency_later() -> None:
    link = Link(LinkShape(latency=0.002, bandwidth=1e6))
    link.write(0.0, b"a" * 1000)
    # Written while the first is still leaving: it queues behind it.
    link.write(0.0005, b"b" * 1000)
    assert _wire(link) == [(0.003, 1000), (0.004, 1000)]
    link.opened(1.0, 2000)
    link.write(1.0, b"c" * 500)  # written once the link is idle again: leaves at once
    assert _wire(link) == [(1.0025, 500)]


def test_the_end_of_the_stream_arrives_after_what_was_written_before_it() -> None:
    link = Link(LinkShape(latency=0.001, bandwidth=1e3))
    link.write(0.0, b"x" * 10)  # leaves at 10 ms
    link.write(0.0, END)
    assert _wire(link) == [(0.011, 10), (0.011, 0)]
    assert LinkShape(latency=0.001).handshake() == pytest.approx(0.002)


@pytest.mark.parametrize(("latency", "bandwidth"), [(-1.0, 1e6), (0.0, 0.0)])
def test_a_link_needs_a_latency_and_a_bandwidth(latency: float, bandwidth: float) -> None:
    with pytest.raises(ValueError, match="latency >= 0"):
        LinkShape(latency, bandwidth)


def test_a_full_window_holds_bytes_at_the_sender_and_pauses_then_resumes_the_writer() -> None:
    link = Link(LinkShape(latency=0.001, bandwidth=1e9, window=1000, sndbuf=500))
    link.limits(high=1000, low=200)
    assert not link.write(0.0, b"x" * 1500)  # 1000 on the wire, 500 in the send buffer
    assert link.buffered() == 0 and link.in_flight == 1000
    assert link.write(0.0, b"y" * 1200)  # the transport holds 1200: above high, pause
    assert link.buffered() == 1200 and link.paused
    assert not link.write(0.0, b"z")  # already paused: said once
    assert [n for _, n in _wire(link)] == [1000]  # only the window's worth left
    assert not link.opened(0.01, 600)  # 500 more leave (no silly window for the next 100)
    assert link.buffered() == 701 and link.in_flight == 900
    assert link.opened(0.02, 900)  # the transport now holds at or below low: resume
    assert not link.paused and link.buffered() == 0
    assert sum(n for _, n in _wire(link)) == 1500  # 201 wait in the send buffer


def test_jitter_and_spikes_never_reorder_the_stream_and_the_seed_fixes_them() -> None:
    faults = LinkFaults(spike_p=0.2, spike_s=0.05)

    def arrivals(seed: int) -> list[tuple[float, int]]:
        link = Link(LinkShape(latency=0.001, jitter=0.002, faults=faults, seed=seed))
        return _sent(link, 0.0, *range(1, 200))

    once = arrivals(7)
    assert [at for at, _ in once] == sorted(at for at, _ in once)
    assert [n for _, n in once] == list(range(1, 200))
    assert once == arrivals(7) and once != arrivals(8)
    assert max(at for at, _ in once) > 0.01  # some spike delayed the tail


def test_a_partition_holds_every_byte_until_it_heals() -> None:
    link = Link(LinkShape(latency=0.001, bandwidth=1e9,
                          faults=LinkFaults(partitions=((1.0, 3.0),))))
    assert _sent(link, 0.5, 10) == [(0.50100001, 10)]
    assert _sent(link, 2.0, 10) == [(3.00100001, 10)]
    with pytest.raises(ValueError, match="in order"):
        LinkFaults(partitions=((2.0, 3.0), (0.0, 1.0)))
    # A long partition with a short one inside it, and one starting before it heals.
    overlapping = LinkFaults(partitions=((1.0, 20.0), (1.5, 2.0), (19.0, 25.0)))
    assert overlapping.heals(3.0) == 25.0 and overlapping.heals(0.5) == 0.5


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
