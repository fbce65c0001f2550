"""The blocking block device for threaded programs: one event loop in its own thread.

Every call is a coroutine run on that loop (``run_coroutine_threadsafe``), so
the session, the arena and the socket keep exactly one thread, as asyncio and
the arena require; any number of caller threads may share one device, their
commands are in flight together.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from earmark.runtime.initiator_device import BlockDevice

__all__ = ["SyncBlockDevice"]

T = TypeVar("T")


class SyncBlockDevice:
    """Same operations as :class:`BlockDevice`, blocking. Use ``with``."""

    def __init__(self, url: str, **options: Any) -> None:
        self.device = BlockDevice(url, **options)  # a bad URL raises before any thread starts
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="earmark-initiator",
                                        daemon=True)
        self._thread.start()
        try:
            self._call(self.device.connect())
        except BaseException:
            self._stop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def size(self) -> int:
        return self.device.size

    @property
    def block_size(self) -> int:
        return self.device.block_size

    def read(self, offset: int, length: int) -> bytes:
        return self._call(self.device.read(offset, length))

    def readinto(self, offset: int, buffer: bytearray | memoryview) -> None:
        self._call(self.device.readinto(offset, buffer))

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._call(self.device.write(offset, data))

    def flush(self) -> None:
        self._call(self.device.flush())

    def discard(self, offset: int, length: int) -> None:
        self._call(self.device.discard(offset, length))

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._call(self.device.close())
            finally:
                self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncBlockDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
