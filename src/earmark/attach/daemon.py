"""`earmark attach`'s life: connect, fix the memory, mount, serve, and end cleanly.

Every step that can fail for a reason the user can fix (the URL, the target,
the mountpoint, losetup, the memory lock) fails before anything is left
behind: the mount is undone on any failure after it. Ending (SIGINT, SIGTERM,
`earmark detach`, or an unmount from outside) flushes the LUN, detaches the
loop device, unmounts, and waits for every request in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from earmark.attach.fs import DISK_NAME, DiskFs
from earmark.attach.loopdev import attach_loop, detach_loop
from earmark.attach.mount import Mount, check_mountpoint, unmount
from earmark.attach.pinned import pin_memory
from earmark.attach.serve import FuseServer, largest_write, slot_bytes
from earmark.attach.slots import AllocatedSlots, ReservedSlots, Slots
from earmark.host.policy import Policy
from earmark.memory import Arena, HostLevel
from earmark.memory.arena import format_bytes
from earmark.runtime.busy_poller import BusyPoller
from earmark.runtime.initiator_device import BlockDevice

__all__ = ["SLOT_BYTES", "AttachOptions", "attach"]

SLOT_BYTES = 256 << 10
"""One FUSE request's buffer (a buddy block of the request arena: a power of two); the
largest READ or WRITE we offer the kernel is what fits in it (``largest_write``)."""


@dataclass(frozen=True)
class AttachOptions:
    url: str
    mountpoint: Path
    loop: bool
    policy: Policy
    memory: int
    requests: int
    #: Where to serve Prometheus figures (``--metrics``), or None.
    metrics: tuple[str, int] | None = None
    #: Seconds to poll for while a request waits for the target (``--poll``); 0: never.
    poll: float = 0.0


async def attach(opts: AttachOptions, say: Callable[[str], None]) -> int:
    """Serve until asked to stop; ``say`` gets the lines for stdout (the file, the loop
    device). Raises the user's mistakes (MountError, InitiatorError, LoopError...)."""
    check_mountpoint(opts.mountpoint)
    device = BlockDevice(opts.url, policy=opts.policy, arena=Arena(opts.memory))
    async with device:
        bs = device.block_size
        max_write = largest_write(SLOT_BYTES, bs)
        _check_command_memory(device, opts, max_write + 2 * bs)
        reserved = opts.policy is Policy.RESERVE
        count = 1 + (opts.requests if reserved else 0)  # the merge buffer, the requests'
        slots_arena = Arena(SLOT_BYTES * count, name="fuse-requests")
        held = slots_arena.reserve_now(
            slots_arena.claim({HostLevel.PAGE: slots_arena.capacity}), owner="fuse-requests")
        assert held is not None  # the arena is exactly this claim
        buffers = [held.take(HostLevel.PAGE, SLOT_BYTES).view for _ in range(count)]
        if reserved:
            for warning in pin_memory():
                print(f"earmark attach: warning: {warning}", file=sys.stderr)
        mount = Mount.make(opts.mountpoint, max_read=max_write)
        try:
            fs = DiskFs(device.size, bs, uid=os.getuid(), gid=os.getgid(),
                        time=int(time.time()))
            slots: Slots = (ReservedSlots(buffers[1:]) if reserved
                            else AllocatedSlots(SLOT_BYTES, opts.requests))
            server = FuseServer(mount.fd, fs, device, slots, buffers[0],
                                BusyPoller(asyncio.get_running_loop(), opts.poll) if opts.poll
                                else None)
            agreed = await server.handshake(max_write)
            assert slot_bytes(agreed.max_write, bs) <= SLOT_BYTES
            server.start()
            with _metrics(opts, device, server):
                return await _serve(opts, server, mount, device, say)
        finally:
            mount.close()
            held.release()


@contextlib.contextmanager
def _metrics(opts: AttachOptions, device: BlockDevice, server: FuseServer) -> Iterator[None]:
    """``--metrics``: the initiator's figures over HTTP while the LUN is attached."""
    if opts.metrics is None:
        yield
        return
    from earmark.service.initiator_metrics import InitiatorCollector  # prometheus-client
    from earmark.service.metrics import MetricsServer

    collector = InitiatorCollector(device, asyncio.get_running_loop(), lambda: server.in_flight)
    http = MetricsServer(collector, *opts.metrics)
    print(f"earmark attach: metrics at {http.url}", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        http.close()


def _check_command_memory(device: BlockDevice, opts: AttachOptions, largest: int) -> None:
    """Under ``reserve`` every request in flight must get its command's memory at once:
    the initiator's arena holds ``--requests`` of the largest command beside its receive
    buffer, so no command waits for memory while its request holds a slot."""
    if opts.policy is not Policy.RESERVE:
        return
    admission, arena = device.admission, device.arena
    one = max(admission.claim(write, largest)[0].total for write in (False, True))
    need = arena.committed + opts.requests * one
    if need > arena.capacity:
        raise ValueError(
            f"--memory {format_bytes(arena.capacity)} cannot hold {opts.requests} commands of "
            f"{format_bytes(largest)} ({format_bytes(one)} each) beside the receive buffer: "
            f"give --memory {need} (bytes) or fewer --requests")


async def _serve(opts: AttachOptions, server: FuseServer, mount: Mount, device: BlockDevice,
                 say: Callable[[str], None]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    disk = opts.mountpoint / DISK_NAME.decode()
    loop_dev: str | None = None
    try:
        if opts.loop:
            loop_dev = await attach_loop(disk, device.block_size)
        say(str(disk))
        if loop_dev is not None:
            say(loop_dev)
        stopped = loop.create_task(stop.wait())
        either: list[asyncio.Future[Any]] = [stopped, server.ended]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
    finally:  # a signal while ending changes nothing: ending is what it asks for
        try:
            status = await _end(server, mount, device, loop_dev)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    return status


async def _end(server: FuseServer, mount: Mount, device: BlockDevice,
               loop_dev: str | None) -> int:
    """Flush, detach the loop device, unmount; 1 if any of it failed (said on stderr)."""
    failed: list[str] = []
    if loop_dev is not None:
        err = await detach_loop(loop_dev)
        if err:
            failed.append(f"losetup -d {loop_dev}: {err}")
    await server.drain()
    try:
        await device.flush()
    except Exception as exc:  # the LUN may be gone for good: say so, unmount anyway
        failed.append(f"flush: {exc}")
    if not server.ended.done():
        err = await unmount(mount.path)
        if err:
            failed.append(f"unmount: {err}")
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await server.ended
    await server.drain()
    for line in failed:
        print(f"earmark attach: {line}", file=sys.stderr)
    return 1 if failed else 0
