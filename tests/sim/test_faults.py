"""Each seeded fault on the real stack, switched on by hand: what it must do, and the oracle
that catches the stack when it does not."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest

from earmark.host.policy import Policy
from earmark.sim.disk import Disk, FailingBacking
from earmark.sim.faults import LinkFaults
from earmark.sim.scenario import Scenario, Violation, run_scenario
from earmark.sim.schedule import Schedule
from earmark.sim.virtualtime import run_virtual


def _base(seed: int = 3, **changes: object) -> Scenario:
    """A seed's quick run with no faults, then `changes`."""
    drawn = Scenario.draw(seed, Policy.RESERVE, faults=False, quick=True)
    return dataclasses.replace(drawn, **changes)  # type: ignore[arg-type]


class Writer(asyncio.Protocol):
    """A sender that keeps what the transport tells it about its buffer."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")


class Reader(asyncio.Protocol):
    def __init__(self) -> None:
        self.got = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got += data


def test_a_reader_that_stops_fills_the_window_and_pauses_the_writer_as_a_socket_does() -> None:
    payload = os.urandom(300_000)

    async def main() -> tuple[Writer, Reader, list[int]]:
        loop = asyncio.get_running_loop()
        readers: list[Reader] = []

        def accept() -> Reader:
            readers.append(Reader())
            return readers[-1]

        server = await loop.create_server(accept, "127.0.0.1", 0)
        transport, writer = await loop.create_connection(
            Writer, "127.0.0.1", server.sockets[0].getsockname()[1])
        assert isinstance(writer, Writer)
        transport.set_write_buffer_limits(high=64 << 10)
        reader = readers[0]
        assert reader.transport is not None
        reader.transport.pause_reading()
        transport.write(payload)
        await asyncio.sleep(0.1)
        held = [transport.get_write_buffer_size(), len(reader.got)]
        reader.transport.resume_reading()
        await asyncio.sleep(0.1)
        return writer, reader, held

    writer, reader, (buffered, read) = run_virtual(main, window=32 << 10, sndbuf=16 << 10)
    assert read == 0 and buffered == 300_000 - (32 << 10) - (16 << 10)
    assert writer.calls == ["pause", "resume"]
    assert bytes(reader.got) == payload


def test_resets_make_the_initiator_reconnect_and_lose_nothing() -> None:
    outcome = run_scenario(_base(resets=(0.003, 0.02)))
    assert outcome.outcome == "completed" and not outcome.violations
    assert outcome.reconnects >= 1


def test_a_target_that_crashes_and_restarts_is_logged_in_to_again_and_nothing_is_lost() -> None:
    outcome = run_scenario(_base(crashes=(0.01,)))
    assert outcome.outcome == "completed" and not outcome.violations
    assert outcome.reconnects == 1


def test_a_partition_holds_the_run_until_it_heals() -> None:
    sc = _base(schedule=Schedule.PCT)
    cut = LinkFaults(partitions=((0.05, 2.0),))  # the writers run from about 5 ms on
    outcome = run_scenario(dataclasses.replace(sc, link=dataclasses.replace(sc.link, faults=cut)))
    assert outcome.outcome == "completed" and not outcome.violations
    assert outcome.virtual_s > 1.95


def test_a_disk_error_reaches_fsync_and_a_disk_that_drops_writes_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failing = _base(disk=Disk(1e-4, 0.0, 0.0, seed=3, error_p=0.01))
    reported = run_scenario(failing)
    assert reported.outcome == "io-error" and not reported.violations

    def lost(self: FailingBacking, offset: int, buffers: list[memoryview]) -> None:
        return None  # says done, wrote nothing: a lying disk

    monkeypatch.setattr(FailingBacking, "write", lost)
    caught = run_scenario(failing)
    assert caught.outcome == "completed" and caught.lost_writes > 0
    assert Violation.LOST in caught.violations


@pytest.mark.parametrize(("cut", "fate"), [(17.0, "completed"), (30.0, "session-lost")])
def test_a_partition_past_the_nop_timeout_reconnects_after_it_or_gives_up_and_says_so(
    cut: float, fate: str,
) -> None:
    # NOP-Out after 5 s of silence, 10 s for its answer, then 5 s to log in again.
    sc = _base()
    faults = LinkFaults(partitions=((0.02, 0.02 + cut),))
    outcome = run_scenario(dataclasses.replace(sc, link=dataclasses.replace(sc.link,
                                                                            faults=faults)))
    assert outcome.outcome == fate and not outcome.violations
    assert outcome.reconnects == (fate == "completed")
