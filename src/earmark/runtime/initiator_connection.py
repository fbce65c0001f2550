"""The initiator's connection as an asyncio protocol: the loop says data came, the
sans-I/O :class:`~earmark.initiator.stream.PduStream` does the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from earmark.initiator.failure import FailureKind
from earmark.initiator.stream import PduStream
from earmark.iscsi.pdu import Pdu

__all__ = ["InitiatorStream"]


class InitiatorStream(PduStream, asyncio.BufferedProtocol):
    """A :class:`PduStream` as an asyncio protocol: reads as the loop says data came."""

    def __init__(self, buffer: memoryview, on_lost: Callable[[InitiatorStream, str], None]) -> None:
        super().__init__(buffer)
        self._on_lost = on_lost
        self._arrived = asyncio.Event()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance(asyncio.Transport): uvloop's TCP transport is not a subclass.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failed is None:
            self.failed = f"connection lost: {exc}" if exc else "the target closed the connection"
            self.failed_kind = FailureKind.CLOSED
        self._arrived.set()
        if not self.closed.done():
            self.closed.set_result(None)
        self._on_lost(self, self.failed)

    def eof_received(self) -> bool | None:
        return False

    def _unattached(self, pdu: Pdu, placed: bool) -> None:
        super()._unattached(pdu, placed)
        self._arrived.set()

    async def next_pdu(self, timeout: float) -> Pdu:
        """The next PDU in inbox mode; raises ConnectionError once the link is gone."""
        async with asyncio.timeout(timeout):
            while not self.inbox:
                if self.closed.done():
                    raise ConnectionError(self.failed or "connection closed")
                self._arrived.clear()
                await self._arrived.wait()
        return self.inbox.popleft()
