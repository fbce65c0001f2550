"""The FUSE adapter: requests from /dev/fuse carried to the asyncio iSCSI device and back.

Decides nothing (``earmark.attach.fs`` does): it reads a request into a free
slot, answers it at once when it needs no I/O, and otherwise starts a task that
awaits the device, so as many requests are in flight as there are slots (the
``max_background`` negotiated at INIT). While every slot is taken it stops
reading, and the kernel queues. A slot is one buffer reserved for the largest
request negotiated: the request lands in it, a WRITE's data goes to the
initiator from it, a READ's data arrives into it, and the reply leaves from it.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Awaitable, Callable

from earmark.attach import protocol as P
from earmark.attach.fs import DISK, IO_OPS, DiskFs, Negotiated, covering, negotiate, punch_plan
from earmark.attach.protocol import Op, Request
from earmark.attach.slots import Slots
from earmark.initiator.errors import InitiatorError
from earmark.runtime.busy_poller import BusyPoller
from earmark.runtime.initiator_device import BlockDevice
from earmark.scsi.sense import ScsiError

__all__ = ["FuseServer", "largest_write", "slot_bytes"]

_HEAD = P.OUT_HEADER.size
_WRITE_IN = P.IN_HEADER.size + P.WRITE_IN_BYTES


def slot_bytes(max_write: int, block_size: int) -> int:
    """One slot: a reply header, then room for the largest WRITE as it arrives or the
    whole blocks around the largest READ."""
    return _HEAD + max(_WRITE_IN + max_write, max_write + 2 * block_size)


def largest_write(slot: int, block_size: int) -> int:
    """The largest ``max_write``, in whole pages, whose requests fit a slot of ``slot`` B."""
    pages = (slot - _HEAD - max(_WRITE_IN, 2 * block_size)) // 4096
    return pages * 4096


class FuseServer:
    """Serves ``fs`` on the FUSE descriptor ``fd`` with ``device``, each request in a
    buffer from ``slots``.

    ``scratch`` is the buffer a write of part of a block is merged in (read,
    modify, write of the whole blocks), one at a time. With ``poll`` the loop is kept
    turning, not sleeping, while the device has a request of ours (see :meth:`_polled`).
    """

    def __init__(self, fd: int, fs: DiskFs, device: BlockDevice, slots: Slots,
                 scratch: memoryview, poll: BusyPoller | None = None) -> None:
        self._fd = fd
        self._fs = fs
        self._device = device
        self._slots = slots
        self._scratch = scratch
        self._merge = asyncio.Lock()
        self._poll = poll
        self._loop = asyncio.get_running_loop()
        self._reading = False
        #: The tasks serving block I/O, by request; each leaves as it ends, not through a
        #: done callback, which would cost every request one more turn of the loop.
        self._tasks: dict[int, asyncio.Task[None]] = {}
        #: Done when the kernel ended the connection (unmounted).
        self.ended: asyncio.Future[None] = self._loop.create_future()
        self.io_errors = 0
        self._io: dict[int, Callable[[Request, memoryview], Awaitable[tuple[int, int]]]] = {
            Op.READ: self._read, Op.WRITE: self._write, Op.FLUSH: self._flush,
            Op.FSYNC: self._flush, Op.FALLOCATE: self._fallocate}

    @property
    def in_flight(self) -> int:
        """Requests being served now."""
        return len(self._tasks)

    async def handshake(self, max_write: int) -> Negotiated:
        """Answer the kernel's INIT (its first request), offering ``max_write``."""
        slot = self._slots.take()
        assert slot is not None  # nothing is out yet
        readable = self._loop.create_future()
        self._loop.add_reader(self._fd, readable.set_result, None)
        try:
            await readable
        finally:
            self._loop.remove_reader(self._fd)
        n = os.readv(self._fd, [slot[_HEAD:]])
        req = P.parse(slot[_HEAD:], n)
        if req.op != Op.INIT:
            raise P.ProtocolError(f"the kernel's first FUSE request is {req.op}, not INIT")
        agreed = negotiate(req, slot[_HEAD:], max_write, self._slots.limit)
        self._reply(slot, req.unique, P.INIT_OUT.size, 0)
        self._slots.give(slot)
        return agreed

    def start(self) -> None:
        self._resume()

    def _resume(self) -> None:
        if not self._reading and not self.ended.done():
            self._reading = True
            self._loop.add_reader(self._fd, self._readable)

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _readable(self) -> None:
        """One request a call: the loop calls again while /dev/fuse has more (readiness is
        level-triggered), so no read is made to find it empty, which at queue depth 1 was
        a third system call for every request."""
        slots = self._slots
        slot = slots.take()
        if slot is None:
            self._pause()  # every slot busy: the kernel holds the rest until one is free
            return
        body = slot[_HEAD:]
        try:
            n = os.readv(self._fd, [body])
        except OSError as exc:
            slots.give(slot)
            # EAGAIN, ENOENT: the request was interrupted, and went, before we read it.
            if exc.errno not in (errno.EAGAIN, errno.EINTR, errno.ENOENT):  # ENODEV: unmounted
                self._pause()
                if not self.ended.done():
                    self.ended.set_result(None)
            return
        req = P.parse(body, n)
        op = req.op
        if op in P.NO_REPLY:
            self._done(slot)
        elif op in IO_OPS and req.nodeid == DISK:
            self._tasks[req.unique] = self._loop.create_task(self._serve_io(slot, req))
        else:
            size, error = self._fs.answer(req, body)
            self._reply(slot, req.unique, size, error)
            self._done(slot)
        if self._poll is not None:
            self._polled(self._poll)

    async def _serve_io(self, slot: memoryview, req: Request) -> None:
        try:
            try:
                at, size = await self._io[req.op](req, slot)
                error = 0
            except _Errno as exc:
                at, size, error = _HEAD, 0, exc.code
            except (ScsiError, InitiatorError):
                self.io_errors += 1
                at, size = _HEAD, 0
                error = errno.EOPNOTSUPP if req.op == Op.FALLOCATE else errno.EIO
            if at == _HEAD:
                self._reply(slot, req.unique, size, error)
            else:  # a READ of part of a block: its bytes start later in the slot
                P.pack_header(slot, req.unique, size, error)
                self._send([slot[:_HEAD], slot[at:at + size]])
        finally:
            del self._tasks[req.unique]
            self._done(slot)
            if self._poll is not None:
                self._polled(self._poll)

    def _polled(self, poll: BusyPoller) -> None:
        """Poll while the device has a request of ours: its answer is what comes next. With
        none, the next request is the application's to make, on a CPU we would keep from it."""
        if self._tasks:
            poll.woke()
        else:
            poll.idle()

    def _done(self, slot: memoryview) -> None:
        self._slots.give(slot)
        if not self._reading:
            self._resume()

    def _reply(self, slot: memoryview, unique: int, body: int, error: int) -> None:
        P.pack_header(slot, unique, 0 if error else body, error)
        self._send([slot[:_HEAD + (0 if error else body)]])

    def _send(self, parts: list[memoryview]) -> None:
        try:
            os.writev(self._fd, parts)
        except OSError as exc:  # ENOENT: the request was interrupted meanwhile
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                raise

    # ------------------------------------------------------------ block I/O
    # Each returns (where the reply's body starts in the slot, its length).

    async def _read(self, req: Request, slot: memoryview) -> tuple[int, int]:
        fs = self._fs
        offset = req.offset
        size = fs.size - offset  # what is left of the disk, if less than asked
        if req.size < size:
            size = req.size
        if size <= 0:
            return _HEAD, 0
        start, length = covering(offset, size, fs.block_size)
        await self._device.readinto(start, slot[_HEAD:_HEAD + length])
        return _HEAD + offset - start, size

    async def _write(self, req: Request, slot: memoryview) -> tuple[int, int]:
        fs = self._fs
        size = min(req.size, fs.size - req.offset)
        if size <= 0:
            raise _Errno(errno.ENOSPC)
        at = _HEAD + req.data_at
        data = slot[at:at + size]
        start, length = covering(req.offset, size, fs.block_size)
        if start == req.offset and length == size:
            await self._device.write(start, data)
        else:
            await self._merged(start, length, req.offset - start, data)
        P.WRITE_OUT.pack_into(slot, _HEAD, size)
        return _HEAD, P.WRITE_OUT.size

    async def _merged(self, start: int, length: int, skip: int,
                      data: memoryview | bytes) -> None:
        """Part of a block written: its whole blocks read, changed here and written back."""
        async with self._merge:
            blocks = self._scratch[:length]
            await self._device.readinto(start, blocks)
            blocks[skip:skip + len(data)] = data
            await self._device.write(start, blocks)

    async def _flush(self, req: Request, slot: memoryview) -> tuple[int, int]:
        await self._device.flush()
        return _HEAD, 0

    async def _fallocate(self, req: Request, slot: memoryview) -> tuple[int, int]:
        fs = self._fs
        mode = req.flags
        if mode & ~P.FALLOC_KEEP_SIZE == 0 and req.offset + req.size <= fs.size:
            return _HEAD, 0  # a LUN is all allocated already
        if mode != P.FALLOC_PUNCH_HOLE | P.FALLOC_KEEP_SIZE:
            raise _Errno(errno.EOPNOTSUPP)
        (start, length), edges = punch_plan(req.offset, req.size, fs.block_size, fs.size)
        if length:
            await self._device.discard(start, length)
        for at, size in edges:
            begin, span = covering(at, size, fs.block_size)
            await self._merged(begin, span, at - begin, bytes(size))
        return _HEAD, 0

    async def drain(self) -> None:
        """Until every request in flight is answered."""
        while self._tasks:
            await asyncio.wait(list(self._tasks.values()))


class _Errno(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(os.strerror(code))
        self.code = code
