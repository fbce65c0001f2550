"""The iSCSI initiator's protocol side: URLs, errors and the sans-I/O session.

Everything here is pure protocol logic; the asyncio adapter that feeds it bytes
and time lives in ``earmark.runtime.initiator_*``.
"""
