"""`earmark serve --portal ADDRESS:PORT`: more network portals for the same targets.

Every portal is in the target's one portal group, so an initiator may log in one session
through each (multipath) to the same LUNs: the LUN's reservations, unit attentions and
data are the LUN's, whichever path a command came by, and SendTargets names every
portal. The listener is the target server's own `new_connection`, as for its first
portal: only where connections come from differs.
"""

from __future__ import annotations

import asyncio

from earmark.iscsi.discovery import Portal
from earmark.runtime.server import TargetServer
from earmark.target.portal import PORTAL_GROUP_TAG


async def listen_also(server: TargetServer, address: str, port: int) -> asyncio.Server:
    """Listen on one more portal (port 0: any free one); raises OSError as binding does."""
    listener = await server.listen(address, port)
    port = listener.sockets[0].getsockname()[1]
    server.portal.network_portals.append(Portal(address, port, PORTAL_GROUP_TAG))
    return listener
