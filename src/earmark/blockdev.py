"""The public block-device API: ``earmark.open(url)`` and ``earmark.open_sync(url)``.

``url`` is ``iscsi://[user[%secret]@]host[:port]/target-iqn/lun`` (libiscsi and
QEMU syntax); CHAP credentials may come from EARMARK_CHAP_USER and
EARMARK_CHAP_SECRET instead. Options (``arena``, ``policy``, ``timeouts``,
``reconnect_timeout``...) are those of :class:`BlockDevice` and
:class:`SyncBlockDevice` (which has no ``policy``: it always reserves).

    async with earmark.open("iscsi://127.0.0.1:3261/iqn.2024-01.org.example:disk/1") as dev:
        await dev.write(0, b"\\0" * dev.block_size)
        data = await dev.read(0, dev.block_size)
"""

from __future__ import annotations

import os
from typing import Any

from earmark.runtime.initiator_device import BlockDevice
from earmark.runtime.initiator_sync import SyncBlockDevice

__all__ = ["BlockDevice", "SyncBlockDevice", "open", "open_sync"]


def open(url: str, **options: Any) -> BlockDevice:
    """An async block device, connected by ``async with`` (or ``await dev.connect()``)."""
    options.setdefault("environ", os.environ)
    return BlockDevice(url, **options)


def open_sync(url: str, **options: Any) -> SyncBlockDevice:
    """A blocking block device, connected on return; close it (or use ``with``).

    One command at a time, in the caller's thread, no event loop: the fastest
    way to wait for each I/O (queue depth 1). For I/Os in flight together, use
    :func:`open`."""
    options.setdefault("environ", os.environ)
    return SyncBlockDevice(url, **options)
