"""An earmark target on its own thread and event loop, inside another program.

The demo, tests and benchmarks need a real target next to the code under test
without sharing its event loop: a stalled host loop must not stall the target
(and the other way round), exactly as with a target on another machine.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType

from earmark.iscsi.login import TargetEntry
from earmark.memory import Arena, DeadlockReport
from earmark.memory.levels import TargetLevel
from earmark.runtime.server import TargetServer, TargetSpec
from earmark.scsi.disk import Disk
from earmark.target.backing import Backing
from earmark.target.lun import LogicalUnit
from earmark.target.session import Policy, SessionConfig

DEFAULT_IQN = "iqn.2026-11.org.earmark:embedded"


class EmbeddedTarget:
    def __init__(
        self,
        backing: Backing,
        *,
        memory: int = 64 << 20,
        policy: Policy = Policy.RESERVE,
        iqn: str = DEFAULT_IQN,
        chap: tuple[str, str] | None = None,
        block_size: int = 512,
        watchdog_s: float = 2.0,
    ) -> None:
        disk = Disk(backing.size // block_size, serial="EMBEDDED", block_size=block_size)
        self.iqn = iqn
        self.arena = Arena(memory, levels=TargetLevel, name="target arena")
        self.server = TargetServer(
            [TargetSpec(TargetEntry(iqn, chap=chap), {0: LogicalUnit(0, disk, backing)})],
            arena=self.arena,
            config=SessionConfig(policy=policy),
            port=0,
            watchdog_s=watchdog_s,
        )
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="earmark-target",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"iscsi://127.0.0.1:{self.server.port}/{self.iqn}/0"

    @property
    def deadlock(self) -> DeadlockReport | None:
        return self.server.deadlock

    def start(self) -> EmbeddedTarget:
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

    def __enter__(self) -> EmbeddedTarget:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
