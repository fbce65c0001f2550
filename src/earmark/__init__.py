"""earmark: network block storage that cannot hit the writeback memory deadlock."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from earmark.blockdev import BlockDevice, SyncBlockDevice
    from earmark.service.embed import BackgroundTarget, LunSource
    from earmark.service.embed import Target as Target

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


def serve_in_background(*luns: LunSource, **options: Any) -> BackgroundTarget:
    """A target on its own thread for a test suite: ``with earmark.serve_in_background(8 <<
    20) as target: target.url``; a LUN is a size in bytes (memory) or a file's path."""
    from earmark.service.embed import serve_in_background as serve

    return serve(*luns, **options)


def __getattr__(name: str) -> Any:
    """``earmark.Target``, the asyncio embedded target, imported on first use."""
    if name == "Target":
        from earmark.service.embed import Target

        return Target
    raise AttributeError(f"module 'earmark' has no attribute {name!r}")
