"""An earmark target inside another program: one target, one LUN.

The demo, tests and benchmarks need a real target next to the code under test.
On TCP it runs on its own thread and event loop (:class:`EmbeddedTarget`): a
stalled host loop must not stall the target (and the other way round), exactly
as with a target on another machine. In the simulator it shares the virtual-time
loop and is reached over the simulated network (:func:`one_lun_server`).
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Self, Unpack

from earmark.memory import DeadlockReport
from earmark.runtime.server import TargetServer
from earmark.target import build
from earmark.target.backing import Backing


def one_lun_server(backing: Backing, *, watchdog_s: float = 2.0,
                   **options: Unpack[build.OneLun]) -> TargetServer:
    """A target server with one target and LUN 0 on ``backing``, on a free port (not started)."""
    return TargetServer(build.one_lun(backing, **options), watchdog_s=watchdog_s)


class EmbeddedTarget:
    def __init__(self, backing: Backing | TargetServer, *, watchdog_s: float = 2.0,
                 **options: Unpack[build.OneLun]) -> None:
        self.server = backing if isinstance(backing, TargetServer) else one_lun_server(
            backing, watchdog_s=watchdog_s, **options)
        (self.iqn,) = self.server.portal.targets
        self.arena = self.server.arena
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="earmark-target",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"iscsi://127.0.0.1:{self.server.port}/{self.iqn}/0"

    @property
    def deadlock(self) -> DeadlockReport | None:
        return self.server.deadlock

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=2), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
