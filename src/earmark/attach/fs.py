"""The filesystem `earmark attach` serves: a root directory holding one file, ``disk``.

Sans-I/O: :meth:`DiskFs.answer` packs the reply to every request that needs no
I/O (lookups, attributes, the directory, INIT) into the caller's buffer, and
says which requests are block I/O for the adapter to carry out; the block
arithmetic those need (unaligned ranges read or written as whole blocks, a hole
punched as an UNMAP of whole blocks and zeroed edges) is here too.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass

from earmark.attach import protocol as P
from earmark.attach.protocol import Attr, Op, Request

__all__ = ["DISK_NAME", "IO_OPS", "DiskFs", "Negotiated", "covering", "punch_plan"]

DISK_NAME = b"disk"
ROOT, DISK = 1, 2
_VALID = 3600
"""Seconds the kernel may cache names and attributes: nothing here ever changes."""
_DT_DIR, _DT_REG = 4, 8

IO_OPS = frozenset({Op.READ, Op.WRITE, Op.FLUSH, Op.FSYNC, Op.FALLOCATE})
"""The requests the adapter serves with the iSCSI device; every other is answered here."""


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What INIT agreed: the largest READ or WRITE the kernel will send, and how many
    requests it keeps in flight in the background (readahead, writeback)."""

    max_write: int
    max_background: int


def negotiate(req: Request, into: memoryview, max_write: int, requests: int) -> Negotiated:
    """INIT's reply body at the start of ``into``: ``max_write`` when the kernel lets us
    raise its request size to that (FUSE_MAX_PAGES), else its default of 32 pages."""
    flags = req.flags & P.WANTED_FLAGS
    if not flags & P.MAX_PAGES:
        max_write = min(max_write, 32 * 4096)
    P.INIT_OUT.pack_into(into, 0, P.KERNEL_MAJOR, min(req.minor, 38),
                         min(req.size, max_write), flags, requests, requests * 3 // 4,
                         max_write, 1, max_write // 4096, 0, 0)
    return Negotiated(max_write, requests)


class DiskFs:
    """Answers for a LUN of ``size`` bytes as ``/disk``, owned by ``uid``:``gid``."""

    def __init__(self, size: int, block_size: int, *, uid: int, gid: int, time: int) -> None:
        self.size = size
        self.block_size = block_size
        self._root = Attr(ROOT, stat.S_IFDIR | 0o755, 0, 2, uid, gid, block_size, time)
        self._disk = Attr(DISK, stat.S_IFREG | 0o600, size, 1, uid, gid, block_size, time)

    def answer(self, req: Request, into: memoryview) -> tuple[int, int]:
        """(body bytes packed at the start of ``into``, errno) for a request not in
        :data:`IO_OPS` and not INIT."""
        op, node = req.op, req.nodeid
        if op == Op.LOOKUP:
            if node != ROOT or req.name != DISK_NAME:
                return 0, errno.ENOENT
            return P.pack_entry(into, 0, self._disk, _VALID), 0
        if op in (Op.GETATTR, Op.SETATTR):
            attr = self._attr(node)
            if attr is None:
                return 0, errno.ENOENT
            if op == Op.SETATTR and req.flags & P.FATTR_SIZE and req.size != attr.size:
                return 0, errno.EPERM  # a disk's size is the LUN's
            return P.pack_attr(into, 0, attr, _VALID), 0
        if op in (Op.OPEN, Op.OPENDIR):
            if (node == DISK) != (op == Op.OPEN):
                return 0, errno.EISDIR if node == ROOT else errno.ENOTDIR
            # Direct I/O: the kernel's page cache for this file would be a second copy of
            # the loop device's (or the filesystem's) own, and would hide our writeback.
            open_flags = P.FOPEN_DIRECT_IO | P.FOPEN_PARALLEL_DIRECT_WRITES if node == DISK else 0
            P.OPEN_OUT.pack_into(into, 0, 0, open_flags)
            return P.OPEN_OUT.size, 0
        if op == Op.READDIR:
            return self._readdir(req, into), 0
        if op == Op.STATFS:
            bs = self.block_size
            blocks = self.size // bs
            P.STATFS.pack_into(into, 0, blocks, 0, 0, 2, 0, bs, 255, bs, 0)
            return P.STATFS.size, 0
        if op in (Op.RELEASE, Op.RELEASEDIR, Op.FSYNCDIR, Op.ACCESS, Op.DESTROY):
            return 0, 0
        return 0, errno.ENOSYS

    def _attr(self, node: int) -> Attr | None:
        return self._root if node == ROOT else self._disk if node == DISK else None

    def _readdir(self, req: Request, into: memoryview) -> int:
        entries = ((ROOT, b".", _DT_DIR), (ROOT, b"..", _DT_DIR), (DISK, DISK_NAME, _DT_REG))
        at = 0
        for index in range(req.offset, len(entries)):
            ino, name, kind = entries[index]
            if at + P.DIRENT_HEADER.size + len(name) + 8 > req.size:
                break
            at += P.pack_dirent(into, at, ino, index + 1, name, kind)
        return at


def covering(offset: int, size: int, block_size: int) -> tuple[int, int]:
    """(start, length) of the whole blocks that hold ``size`` bytes at ``offset``."""
    start = offset - offset % block_size
    end = -(-(offset + size) // block_size) * block_size
    return start, end - start


def punch_plan(offset: int, size: int, block_size: int,
               disk: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """A punched hole as ((start, length) of the whole blocks to UNMAP, the byte ranges
    around them to write zeros over), inside a disk of ``disk`` bytes."""
    end = min(offset + size, disk)
    first = -(-offset // block_size) * block_size
    last = end - end % block_size
    if first >= last:
        return (first, 0), [(offset, end - offset)] if end > offset else []
    edges = [(a, b - a) for a, b in ((offset, first), (last, end)) if b > a]
    return (first, last - first), edges
