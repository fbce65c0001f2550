"""`earmark attach --poll`: the daemon polls while the device has a request of ours, and
stops once none is left, when the application's next request needs the CPU to be made.

In one process: the FUSE descriptor is one end of a SEQPACKET socket pair (one request a
read, as /dev/fuse gives them), the device a stand-in whose reads the test answers."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import ClassVar, cast

import pytest

from earmark import busy_poll
from earmark.attach import protocol as P
from earmark.attach.fs import DISK, ROOT, DiskFs
from earmark.attach.serve import FuseServer
from earmark.attach.slots import ReservedSlots
from earmark.busy_poll import Poll
from earmark.runtime import busy_poller
from earmark.runtime.busy_poller import BusyPoller
from earmark.runtime.initiator_device import BlockDevice

BLOCK = 4096
_READ_IN_BYTES = 40


class RecordingPoll(Poll):
    """The real rule, with what the daemon told it, in order."""

    told: ClassVar[list[str]] = []

    def event(self, now: float) -> bool:
        RecordingPoll.told.append("event")
        return super().event(now)

    def idle(self) -> None:
        RecordingPoll.told.append("idle")
        super().idle()


class HeldDevice:
    """Each read waits until the test lets it go."""

    def __init__(self) -> None:
        self.reads: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()

    async def readinto(self, offset: int, buffer: memoryview) -> None:
        answered = asyncio.get_running_loop().create_future()
        await self.reads.put(answered)
        await answered
        buffer[:] = b"r" * len(buffer)


def request(op: P.Op, unique: int, nodeid: int, body: bytes = b"") -> bytes:
    return P.IN_HEADER.pack(P.IN_HEADER.size + len(body), op, unique, nodeid,
                            0, 0, 0, 0, 0) + body


def read_request(unique: int, offset: int) -> bytes:
    body = P.READ_IN.pack(0, offset, BLOCK, 0)
    return request(P.Op.READ, unique, DISK, body + bytes(_READ_IN_BYTES - len(body)))


async def reply(kernel: socket.socket) -> bytes:
    return await asyncio.get_running_loop().sock_recv(kernel, 1 << 20)


async def served(kernel: socket.socket, daemon: socket.socket) -> tuple[list[str], list[bytes]]:
    loop = asyncio.get_running_loop()
    device = HeldDevice()
    poller = BusyPoller(loop, window=10.0)
    poll = RecordingPoll
    slots = ReservedSlots([memoryview(bytearray(2 * BLOCK + 64)) for _ in range(2)])
    server = FuseServer(daemon.fileno(), DiskFs(1 << 20, BLOCK, uid=0, gid=0, time=0),
                        cast("BlockDevice", device), slots, memoryview(bytearray(BLOCK)),
                        poller)
    server.start()
    told: list[str] = []
    replies: list[bytes] = []
    kernel.send(read_request(1, 0))
    (await device.reads.get()).set_result(None)  # the request is out on the device
    told.append(f"read sent: {poll.told} polling={poller.polling}")
    replies.append(await reply(kernel))
    told.append(f"read answered: {poll.told} polling={poller.polling}")
    kernel.send(request(P.Op.GETATTR, 2, ROOT, bytes(16)))
    replies.append(await reply(kernel))
    told.append(f"getattr answered: {poll.told} polling={poller.polling}")
    return told, replies


def test_the_daemon_polls_only_while_the_device_has_a_request_of_ours(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(busy_poller, "Poll", RecordingPoll)
    monkeypatch.setattr(RecordingPoll, "told", [])
    monkeypatch.setattr(busy_poll, "PREEMPTED", 10.0)  # a slow turn here ends no poll
    kernel, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    kernel.setblocking(False)
    os.set_blocking(daemon.fileno(), False)
    try:
        told, replies = asyncio.run(served(kernel, daemon))
    finally:
        kernel.close()
        daemon.close()
    assert told == [
        "read sent: ['event'] polling=True",  # the read went to the device: its answer comes next
        "read answered: ['event', 'idle'] polling=False",  # nothing awaited: no polling
        "getattr answered: ['event', 'idle', 'idle'] polling=False",  # answered at once
    ]
    head, error, unique = P.OUT_HEADER.unpack_from(replies[0])
    assert (head, error, unique) == (P.OUT_HEADER.size + BLOCK, 0, 1)
    assert replies[0][P.OUT_HEADER.size:] == b"r" * BLOCK
