"""The FUSE kernel protocol (``linux/fuse.h``, 7.x), as bytes in and bytes out.

Sans-I/O, like ``earmark.iscsi``: a request is parsed from the buffer the
kernel wrote it into (:func:`parse`), and a reply is packed into buffers the
caller owns (:func:`pack_header` and the ``pack_*`` bodies), so serving a
request needs no allocation beyond what the caller reserved. Only what a
filesystem of one file answers is here; the rest is answered ENOSYS, which the
kernel remembers.

We speak the protocol ourselves rather than through libfuse (pyfuse3): pyfuse3
has no FALLOCATE handler (a loop device's discard is one), does not say what
maximum request size it negotiated, and hands every write over as a new
``bytes``; here a request lands in a buffer reserved for it and its data goes
to the iSCSI initiator from there.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = [
    "ATTR_BYTES", "DIRENT_HEADER", "ENTRY_BYTES", "INIT_OUT", "IN_HEADER", "KERNEL_MAJOR",
    "OUT_HEADER", "READ_IN", "Op", "Request", "pack_attr", "pack_dirent", "pack_entry",
    "pack_header", "parse",
]

KERNEL_MAJOR = 7
OLDEST_MINOR = 31
"""The oldest minor version we serve (Linux 5.4): max_pages and parallel direct writes."""

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, ...
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
INIT_IN = struct.Struct("<IIII")  # major, minor, max_readahead, flags
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")  # 64 bytes
READ_IN = struct.Struct("<QQII")  # fh, offset, size, flags (read_in and write_in begin so)
WRITE_IN_BYTES = 40
FSYNC_IN = struct.Struct("<QI")
FALLOCATE_IN = struct.Struct("<QQQI")  # fh, offset, length, mode
SETATTR_IN = struct.Struct("<IIQQ")  # valid, padding, fh, size
OPEN_OUT = struct.Struct("<QI4x")
WRITE_OUT = struct.Struct("<I4x")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # struct fuse_attr, 88 bytes
ATTR_BYTES = 16 + ATTR.size  # attr_valid, attr_valid_nsec, dummy, attr
ENTRY_BYTES = 40 + ATTR.size  # nodeid, generation, entry/attr valid (+nsec), attr
_ENTRY_HEAD = struct.Struct("<QQQQII")
_ATTR_HEAD = struct.Struct("<QI4x")
STATFS = struct.Struct("<QQQQQIIII24x")  # struct fuse_kstatfs, 80 bytes
DIRENT_HEADER = struct.Struct("<QQII")  # ino, off, namelen, type


class Op(enum.IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    ACCESS = 34
    INTERRUPT = 36
    DESTROY = 38
    BATCH_FORGET = 42
    FALLOCATE = 43


NO_REPLY = frozenset({Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT})
"""Requests the kernel expects no answer to."""

# FUSE_INIT flags we take when the kernel offers them.
ASYNC_READ = 1 << 0
BIG_WRITES = 1 << 5
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
WANTED_FLAGS = ASYNC_READ | BIG_WRITES | PARALLEL_DIROPS | MAX_PAGES

FOPEN_DIRECT_IO = 1 << 0
FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6
FATTR_SIZE = 1 << 3

FALLOC_KEEP_SIZE = 0x01
FALLOC_PUNCH_HOLE = 0x02


@dataclass(slots=True)
class Request:
    """One request's header and the fields of its arguments that we use.

    ``offset``/``size`` are READ's, WRITE's and FALLOCATE's range (WRITE's data
    is at ``data_at`` in the buffer it came in), ``flags`` INIT's flags,
    FALLOCATE's mode or SETATTR's valid mask, ``name`` LOOKUP's.
    """

    op: int
    unique: int
    nodeid: int
    offset: int = 0
    size: int = 0
    flags: int = 0
    data_at: int = 0
    name: bytes = b""
    minor: int = 0


class ProtocolError(Exception):
    """The kernel sent what this module cannot parse (a short read, a bad length)."""


_HEAD = struct.Struct("<IIQQ")  # IN_HEADER's len, opcode, unique, nodeid
_RANGE = struct.Struct("<8xQI")  # read_in's and write_in's offset and size, after fh
_WRITE = int(Op.WRITE)
_RANGED = frozenset({int(Op.READ), _WRITE, int(Op.READDIR)})
_DATA_AT = IN_HEADER.size + WRITE_IN_BYTES


def parse(buf: memoryview, n: int) -> Request:
    """The request of ``n`` bytes the kernel wrote at the start of ``buf``.

    READ and WRITE, the requests of every block I/O, come first and with the fewest
    steps: at queue depth 1 this runs once an I/O."""
    if n < IN_HEADER.size:
        raise ProtocolError(f"a FUSE request of {n} B is shorter than its header")
    length, op, unique, nodeid = _HEAD.unpack_from(buf)
    if length != n:
        raise ProtocolError(f"a FUSE request says {length} B but {n} B were read")
    at = IN_HEADER.size
    if op in _RANGED:
        offset, size = _RANGE.unpack_from(buf, at)
        if op == _WRITE and _DATA_AT + size > n:
            raise ProtocolError(f"a FUSE write of {size} B came in {n} B")
        return Request(op, unique, nodeid, offset, size, 0, _DATA_AT)
    req = Request(op, unique, nodeid)
    if op == Op.FALLOCATE:
        _, req.offset, req.size, req.flags = FALLOCATE_IN.unpack_from(buf, at)
    elif op == Op.FSYNC:
        _, req.flags = FSYNC_IN.unpack_from(buf, at)
    elif op == Op.SETATTR:
        req.flags, _, _, req.size = SETATTR_IN.unpack_from(buf, at)
    elif op == Op.LOOKUP:
        req.name = bytes(buf[at:n]).rstrip(b"\0")
    elif op == Op.INIT:
        major, req.minor, req.size, req.flags = INIT_IN.unpack_from(buf, at)
        if major != KERNEL_MAJOR:
            raise ProtocolError(f"FUSE protocol {major}.x; this speaks {KERNEL_MAJOR}.x")
    return req


def pack_header(into: memoryview | bytearray, unique: int, body: int, error: int = 0) -> None:
    """The 16-byte reply header for a body of ``body`` bytes (``error`` a positive errno)."""
    OUT_HEADER.pack_into(into, 0, OUT_HEADER.size + body, -error, unique)


@dataclass(frozen=True, slots=True)
class Attr:
    """What ``stat`` says of a node: its number, mode, size and times."""

    ino: int
    mode: int
    size: int
    nlink: int
    uid: int
    gid: int
    blksize: int
    time: int


def pack_attr(into: memoryview | bytearray, at: int, attr: Attr, valid: int) -> int:
    """``fuse_attr_out`` at ``at``; its size."""
    _ATTR_HEAD.pack_into(into, at, valid, 0)
    _pack_fuse_attr(into, at + _ATTR_HEAD.size, attr)
    return ATTR_BYTES


def pack_entry(into: memoryview | bytearray, at: int, attr: Attr, valid: int) -> int:
    """``fuse_entry_out`` at ``at``; its size."""
    _ENTRY_HEAD.pack_into(into, at, attr.ino, 0, valid, valid, 0, 0)
    _pack_fuse_attr(into, at + _ENTRY_HEAD.size, attr)
    return ENTRY_BYTES


def _pack_fuse_attr(into: memoryview | bytearray, at: int, a: Attr) -> None:
    ATTR.pack_into(into, at, a.ino, a.size, -(-a.size // 512), a.time, a.time, a.time,
                   0, 0, 0, a.mode, a.nlink, a.uid, a.gid, 0, a.blksize, 0)


def pack_dirent(into: memoryview | bytearray, at: int, ino: int, next_offset: int,
                name: bytes, kind: int) -> int:
    """One ``fuse_dirent`` at ``at`` (``kind`` a DT_* type), padded to 8 bytes; its size."""
    DIRENT_HEADER.pack_into(into, at, ino, next_offset, len(name), kind)
    end = at + DIRENT_HEADER.size + len(name)
    into[at + DIRENT_HEADER.size:end] = name
    padded = -(-end // 8) * 8
    into[end:padded] = bytes(padded - end)
    return padded - at
