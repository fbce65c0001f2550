"""Opening an initiator connection on asyncio (again, after a loss, as the backoff allows),
and the discovery session that needs no more.

Both run steps decided in ``earmark.initiator`` (login, SendTargets: an
:class:`~earmark.initiator.login.Exchange`): this module connects, sends what
they give and feeds them what comes back, within a time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping

from earmark.initiator.device import DEFAULT_INITIATOR_NAME, RECEIVE_BUFFER_BYTES
from earmark.initiator.discovery import SendTargetsSteps
from earmark.initiator.errors import ConnectError, InitiatorError
from earmark.initiator.login import Exchange, LoginSteps
from earmark.initiator.recovery import Backoff
from earmark.initiator.url import IscsiUrl, parse_url
from earmark.iscsi.discovery import DiscoveredTarget
from earmark.iscsi.pdu import Pdu
from earmark.runtime.initiator_connection import InitiatorStream

__all__ = ["discover", "exchange", "log_in_again", "open_stream"]


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
