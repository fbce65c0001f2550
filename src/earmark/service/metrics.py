"""`earmark serve --metrics ADDRESS:PORT`: Prometheus figures, read when scraped (and the
pieces `earmark attach --metrics` shares: the collector on a loop, the arena's figures, the
HTTP server).

Nothing is pushed on the hot path: the collector reads, at scrape time, what the target
keeps anyway: the arena's books, the portal's connections and sessions, each LUN's and
the portal's counters (`earmark.target.counters`), and each socket's byte counts from the
kernel (TCP_INFO). The scrape runs on prometheus-client's HTTP thread; the snapshot is
taken on the target's loop, which owns every one of those objects, so the figures of one
scrape are of one moment and nothing is read while it changes.

A connection's bytes are counted while it is open; its last figures at a scrape are kept
when it closes, so the totals never go back (what a connection moved after the last
scrape before it closed is not counted). No latency histograms: timing each command
would cost two clock reads per command on the hot path.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from earmark.memory import Arena
from earmark.runtime.server import TargetServer
from earmark.scsi.cdb import Opcode
from earmark.scsi.sense import ScsiStatus

#: struct tcp_info's tcpi_bytes_acked and tcpi_bytes_received (Linux 4.1 and later).
_TCP_BYTES = struct.Struct("=QQ")
_TCP_BYTES_AT = 120
_TCP_INFO_LEN = _TCP_BYTES_AT + _TCP_BYTES.size
_OPCODES = {int(op): op.name for op in Opcode}


def _opcode(n: int) -> str:
    return _OPCODES.get(n, f"0x{n:02x}")


def _status(n: int) -> str:
    try:
        return ScsiStatus(n).name
    except ValueError:
        return f"0x{n:02x}"


@dataclass
class _Bytes:
    """Bytes received and sent (acknowledged) by the connections, gone ones included."""

    seen: dict[int, tuple[int, int]] = field(default_factory=dict)
    gone_in: int = 0
    gone_out: int = 0

    def update(self, server: TargetServer) -> tuple[int, int]:
        now: dict[int, tuple[int, int]] = {}
        for conn_id, conn in server.connections.items():
            figures = _tcp_bytes(conn.transport) or self.seen.get(conn_id)
            if figures is not None:
                now[conn_id] = figures
        for conn_id, (got, out) in self.seen.items():
            if conn_id not in now:  # closed since the last scrape
                self.gone_in += got
                self.gone_out += out
        self.seen = now
        return (self.gone_in + sum(g for g, _ in now.values()),
                self.gone_out + sum(o for _, o in now.values()))


def _tcp_bytes(transport: asyncio.BaseTransport | None) -> tuple[int, int] | None:
    """(received, sent and acknowledged) of a connection's socket, as the kernel counts."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(info) < _TCP_INFO_LEN:
        return None
    out, got = _TCP_BYTES.unpack_from(info, _TCP_BYTES_AT)
    return got, out


class LoopCollector(Collector):
    """Figures read at scrape time on the loop that owns what they count: the scrape runs
    on prometheus-client's HTTP thread, the snapshot on `loop`, in one go."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        future = asyncio.run_coroutine_threadsafe(self._snapshot(), self.loop)
        yield from future.result(self.timeout)

    async def _snapshot(self) -> list[Metric]:
        raise NotImplementedError


def arena_metrics(prefix: str, arena: Arena, now: float) -> list[Metric]:
    """An arena's books, whole and per level, as `{prefix}_arena_...` gauges."""
    books = arena.gauges(now)
    metrics: list[Metric] = [
        GaugeMetricFamily(f"{prefix}_arena_capacity_bytes", "The arena.", value=arena.capacity),
        GaugeMetricFamily(f"{prefix}_arena_free_bytes",
                          "Arena bytes neither reserved nor allocated.",
                          value=float(books["free"])),  # type: ignore[arg-type]
        GaugeMetricFamily(f"{prefix}_arena_high_water_bytes",
                          "The most of the arena ever committed.",
                          value=float(books["high_water"])),  # type: ignore[arg-type]
    ]
    per_level = {
        "reserved_bytes": "Bytes reserved at the level (drawn or not).",
        "in_use_bytes": "Bytes drawn from reservations or allocated at the level.",
        "high_water_bytes": "The most ever in use at the level.",
        "waiters": "Claims waiting for the level's memory.",
        "oldest_wait_seconds": "How long the oldest claim on the level has waited.",
    }
    families = {key: GaugeMetricFamily(f"{prefix}_arena_level_{key}", doc, labels=["level"])
                for key, doc in per_level.items()}
    levels: dict[str, dict[str, float | None]] = books["levels"]  # type: ignore[assignment]
    for level, figures in levels.items():
        for key, source in (("reserved_bytes", "reserved"), ("in_use_bytes", "in_use"),
                            ("high_water_bytes", "high_water"), ("waiters", "waiters"),
                            ("oldest_wait_seconds", "oldest_wait_s")):
            families[key].add_metric([level], figures[source] or 0.0)
    return metrics + list(families.values())


class TargetCollector(LoopCollector):
    def __init__(self, server: TargetServer, timeout: float = 5.0) -> None:
        super().__init__(timeout)
        self.server = server
        self._bytes = _Bytes()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.server.loop

    async def _snapshot(self) -> list[Metric]:
        """Every figure, read on the loop."""
        server = self.server
        portal = server.portal

        def counter(name: str, doc: str, value: float) -> None:
            metrics.append(CounterMetricFamily(f"earmark_target_{name}", doc, value=value))

        metrics = arena_metrics("earmark_target", server.arena, server.loop.time())

        connections = list(server.connections.values())
        sessions = [c.session for c in connections if c.session is not None]
        states = GaugeMetricFamily("earmark_target_connections",
                                   "Open connections, logging in or in a session.",
                                   labels=["state"])
        states.add_metric(["login"], len(connections) - len(sessions))
        states.add_metric(["session"], len(sessions))
        kinds = GaugeMetricFamily("earmark_target_sessions", "Sessions, by type.",
                                  labels=["type"])
        discovery = sum(s.params.session_type == "Discovery" for s in sessions)
        kinds.add_metric(["normal"], len(sessions) - discovery)
        kinds.add_metric(["discovery"], discovery)
        waiting = GaugeMetricFamily(
            "earmark_target_admission_waiting",
            "Command slots sessions wait to reserve (reserve), commands whose data waits "
            "for a buffer (none).", labels=["kind"])
        waiting.add_metric(["slots"], sum(s.slot_demand() for s in sessions))
        waiting.add_metric(["buffers"], sum(s.blocked is not None for s in sessions))
        in_flight = GaugeMetricFamily("earmark_target_commands_in_flight",
                                      "Commands received and not yet answered.")
        in_flight.add_metric([], sum(len(s.tasks) for s in sessions))
        metrics += [states, kinds, waiting, in_flight]

        commands = CounterMetricFamily("earmark_target_commands",
                                       "SCSI commands received, by LUN and operation.",
                                       labels=["target", "lun", "opcode"])
        failed = CounterMetricFamily("earmark_target_command_failures",
                                     "Commands answered with a status other than GOOD.",
                                     labels=["target", "lun", "opcode", "status"])
        aborted = CounterMetricFamily("earmark_target_aborts",
                                      "Tasks ended by task management (aborts, resets).",
                                      labels=["target", "lun"])
        for iqn, spec in portal.targets.items():
            for number, unit in spec.units.items():
                lun = str(number)
                counts = unit.counters
                for op, n in enumerate(counts.commands):
                    if n:
                        commands.add_metric([iqn, lun, _opcode(op)], n)
                for (op, status), n in counts.failed.items():
                    failed.add_metric([iqn, lun, _opcode(op), _status(status)], n)
                aborted.add_metric([iqn, lun], counts.aborted)
        metrics += [commands, failed, aborted]

        counter("nop_timeouts", "Connections closed for an unanswered NOP-In.",
                portal.counters.nop_timeouts)
        counter("reinstatements", "Logins that reinstated their nexus's session.",
                portal.counters.reinstatements)
        got, sent = self._bytes.update(server)
        counter("received_bytes", "Bytes received on the target's connections.", got)
        counter("sent_bytes", "Bytes sent (and acknowledged) on the target's connections.",
                sent)
        return metrics


class MetricsServer:
    """/metrics over HTTP on its own thread, for as long as the target (or the attached
    device) serves."""

    def __init__(self, collector: Collector, address: str, port: int) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        self._http, self._thread = start_http_server(port, address, registry=registry)
        self.address = address
        self.port: int = self._http.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/metrics"

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)
