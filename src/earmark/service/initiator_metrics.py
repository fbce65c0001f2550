"""`earmark attach --metrics ADDRESS:PORT`: the initiator's own figures, read when scraped.

As on the target, nothing is counted on the hot path for this: the device already keeps
what recovery did (reconnects, aborts, commands sent again) and knows what is in flight;
the arena keeps its books. The snapshot is taken on the device's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from earmark.runtime.initiator_device import BlockDevice
from earmark.service.metrics import LoopCollector, arena_metrics

__all__ = ["InitiatorCollector"]

_PREFIX = "earmark_initiator"


class InitiatorCollector(LoopCollector):
    """``requests`` counts what the device serves on top (FUSE requests in flight)."""

    def __init__(self, device: BlockDevice, loop: asyncio.AbstractEventLoop,
                 requests: Callable[[], int] | None = None, timeout: float = 5.0) -> None:
        super().__init__(timeout)
        self.device = device
        self._loop = loop
        self._requests = requests

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def _snapshot(self) -> list[Metric]:
        device = self.device
        metrics = arena_metrics(_PREFIX, device.arena, self._loop.time())
        metrics += [
            GaugeMetricFamily(f"{_PREFIX}_connected", "1 while a session is logged in.",
                              value=int(device.session is not None)),
            GaugeMetricFamily(f"{_PREFIX}_commands_in_flight",
                              "Commands sent and not yet answered (or waiting for a session).",
                              value=len(device.unanswered())),
            CounterMetricFamily(f"{_PREFIX}_reconnects", "Sessions established again.",
                                value=device.reconnects),
            CounterMetricFamily(f"{_PREFIX}_aborts", "Commands aborted after a timeout.",
                                value=device.aborts),
            CounterMetricFamily(f"{_PREFIX}_reissued",
                                "Commands sent again (after an abort or a reconnect).",
                                value=device.reissued),
        ]
        if self._requests is not None:
            metrics.append(GaugeMetricFamily(f"{_PREFIX}_fuse_requests_in_flight",
                                             "FUSE requests being served.",
                                             value=self._requests()))
        return metrics
