"""The iSCSI initiator's decisions, sans-I/O: no socket, no event loop, no clock of its own.

``session`` (the full feature phase), ``admission`` (what a command must hold,
the idle pool), ``recovery`` (resend, give up, reconnect), ``login`` and
``discovery`` (the exchanges as steps), ``device`` (what a device of either
engine keeps), ``failure`` (why a connection ended), ``url`` and ``errors``.
The engines that feed them bytes and time are ``earmark.runtime.initiator_device``
(asyncio) and ``earmark.runtime.initiator_sync`` (a blocking socket).
"""
