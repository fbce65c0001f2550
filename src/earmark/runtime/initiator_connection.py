"""The initiator's connection on asyncio: the protocol, opening it (again, after a loss, as
the backoff allows), and the discovery session that needs no more.

The loop says data came and the sans-I/O :class:`~earmark.initiator.stream.PduStream`
does the rest. Login and SendTargets are steps decided in ``earmark.initiator`` (an
:class:`~earmark.initiator.login.Exchange`): this module connects, sends what they give
and feeds them what comes back, within a time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

from earmark.initiator.device import DEFAULT_INITIATOR_NAME, RECEIVE_BUFFER_BYTES
from earmark.initiator.discovery import SendTargetsSteps
from earmark.initiator.errors import ConnectError, InitiatorError
from earmark.initiator.failure import FailureKind
from earmark.initiator.login import Exchange, LoginSteps
from earmark.initiator.recovery import Backoff
from earmark.initiator.stream import PduStream
from earmark.initiator.url import IscsiUrl, parse_url
from earmark.iscsi.discovery import DiscoveredTarget
from earmark.iscsi.pdu import Pdu

__all__ = ["InitiatorStream", "discover", "exchange", "log_in_again", "open_stream"]


def _gone(stream: InitiatorStream, reason: str) -> None:
    """A lost stream's loss, told again: nobody listens any more."""


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
        on_lost, self._on_lost = self._on_lost, _gone
        on_lost(self, self.failed)
        # Nothing more comes: let go of the device. A stream is a cycle of its own (the
        # framer's callbacks are its methods), and through it a closed device, with its
        # arena, would live until the next full garbage collection.
        self.sink = None

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


async def open_stream(url: IscsiUrl, buffer: memoryview,
                      on_lost: Callable[[InitiatorStream, str], None], steps: LoginSteps,
                      timeout: float) -> InitiatorStream:
    """Connect and log in; the stream is closed on any failure."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            _, stream = await loop.create_connection(
                lambda: InitiatorStream(buffer, on_lost), url.host, url.port)
    except OSError as exc:  # TimeoutError too
        raise ConnectError.of(url.portal, exc, timeout) from None
    await exchange(stream, steps, timeout)
    steps.full_feature(stream)
    return stream


async def log_in_again(backoff: Backoff, log_in: Callable[[], Awaitable[None]]) -> bool:
    """Try ``log_in`` as the backoff allows; False once it says to give up."""
    loop = asyncio.get_running_loop()
    while backoff.may_try(loop.time()):
        try:
            await log_in()
            return True
        except InitiatorError as exc:
            await asyncio.sleep(backoff.failed(exc, loop.time()))
    return False


async def exchange(stream: InitiatorStream, steps: Exchange, timeout: float) -> None:
    """Run login or SendTargets steps to their end; the stream is closed on a failure."""
    try:
        req: Pdu | None = steps.start()
        while not steps.done:
            if req is not None:
                stream.send(req)
            req = steps.receive(await stream.next_pdu(timeout))
    except (TimeoutError, ConnectionError) as exc:
        error = steps.broken(exc)
        if error is not None:
            stream.close("exchange failed")
            raise error from None
    except BaseException:  # refused, or cancelled (the device is closing): no socket left
        stream.close("exchange failed")
        raise


async def discover(
    url: str | IscsiUrl,
    *,
    initiator_name: str = DEFAULT_INITIATOR_NAME,
    timeout: float = 10.0,
    environ: Mapping[str, str] | None = None,
) -> list[DiscoveredTarget]:
    """SendTargets=All in a discovery session at the URL's portal."""
    portal = url if isinstance(url, IscsiUrl) else parse_url(url, need_target=False,
                                                              environ=environ)
    steps = SendTargetsSteps.login_steps(initiator_name, portal)
    buffer = memoryview(bytearray(RECEIVE_BUFFER_BYTES))
    stream = await open_stream(portal, buffer, lambda s, r: None, steps, timeout)
    try:
        text = SendTargetsSteps(steps.login, steps.where)
        await exchange(stream, text, timeout)
        return text.targets
    finally:
        stream.close("discovery done")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await stream.closed
