"""A target inside a test suite: ``earmark.serve_in_background(...)`` for threaded code,
``async with earmark.Target(...)`` for asyncio, LUNs from files or from memory.

Test harnesses that need an iSCSI target drive the kernel's LIO (root, kernel modules);
this one is a function call, on a free loopback port. The background target runs on a
thread and loop of its own, so a test that blocks its own thread cannot stall it;
``Target`` shares the caller's loop, as asyncio code expects of what it awaits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType
from typing import Unpack

from earmark.runtime.embedded import EmbeddedTarget
from earmark.runtime.server import TargetServer
from earmark.target import build
from earmark.target.backing import Backing, FileBacking, MemoryBacking

#: A LUN: a size in bytes (held in memory), a file's path, or any Backing.
LunSource = int | str | os.PathLike[str] | Backing


def backing_of(source: LunSource, *, readonly: bool = False) -> Backing:
    if isinstance(source, int):
        return MemoryBacking(source)
    if isinstance(source, str | os.PathLike):
        return FileBacking(source, block_size=build.BLOCK_SIZE, read_only=readonly)
    return source


def _server(luns: Sequence[LunSource], options: build.OneLun) -> TargetServer:
    if not luns:
        raise ValueError("give a target at least one LUN: a size in bytes or a file")
    readonly = options.get("readonly", False)
    backings = [backing_of(lun, readonly=readonly) for lun in luns]
    return TargetServer(build.embedded(backings, **options))


def _urls(server: TargetServer) -> list[str]:
    (iqn, spec), = server.portal.targets.items()
    return [f"iscsi://{server.address}:{server.port}/{iqn}/{n}" for n in sorted(spec.units)]


class BackgroundTarget(EmbeddedTarget):
    """``with earmark.serve_in_background(...) as target``: serving on its own thread."""

    @property
    def urls(self) -> list[str]:
        """Every LUN's URL, LUN 0's first (`url`)."""
        return _urls(self.server)


def serve_in_background(*luns: LunSource, **options: Unpack[build.OneLun]) -> BackgroundTarget:
    """A target with LUN n on ``luns[n]``, started by ``with`` (or ``.start()``) on a free
    loopback port, stopped at the block's end."""
    return BackgroundTarget(_server(luns, options))


class Target:
    """``async with earmark.Target(...) as target``: serving on the running loop."""

    def __init__(self, *luns: LunSource, **options: Unpack[build.OneLun]) -> None:
        self.server = _server(luns, options)

    @property
    def urls(self) -> list[str]:
        return _urls(self.server)

    @property
    def url(self) -> str:
        """LUN 0's URL (it includes the port, so only once started)."""
        return self.urls[0]

    async def __aenter__(self) -> Target:
        await self.server.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.server.stop(grace=2)
