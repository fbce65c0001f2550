"""earmark: network block storage that cannot hit the writeback memory deadlock."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from earmark.blockdev import BlockDevice, SyncBlockDevice

__version__ = "0.1.0"


def open(url: str, **options: Any) -> BlockDevice:
    """An iSCSI LUN as an async block device (``async with earmark.open(url) as dev``).

    Imported on first use so that ``import earmark`` stays cheap for the CLI.
    """
    from earmark.blockdev import open as open_device

    return open_device(url, **options)


def open_sync(url: str, **options: Any) -> SyncBlockDevice:
    """An iSCSI LUN as a blocking block device for threaded programs."""
    from earmark.blockdev import open_sync as open_device

    return open_device(url, **options)
