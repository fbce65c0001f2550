"""Backing stores for LUNs: a file (or block device) on the host, or memory.

The runtime calls these off the event loop, with buffers it reserved at admission,
so the interface is scatter/gather over memoryviews: Data-Out PDUs land in several
buffers and go to the disk in one pwritev, without being joined first.

Deallocation (UNMAP, WRITE SAME with UNMAP) punches a hole with
fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE): the blocks then read as
zeros, which is what the target promises with LBPRZ=1. Where the filesystem
refuses to punch, zeros are written instead, so the promise holds either way.
GET LBA STATUS asks the store which blocks are allocated (`extent`): a file's
holes (SEEK_HOLE / SEEK_DATA) are the deallocated blocks.

A file on a memory filesystem (tmpfs, ramfs) has no disk to wait for, but tmpfs
refuses RWF_NOWAIT (EOPNOTSUPP), so the store asks the mount table once, at open,
what the file lives on (`_in_memory`), and its reads are then all "cached".
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat
from collections.abc import Callable
from typing import Protocol, cast

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_ZERO_CHUNK = 1 << 20
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_NO_PUNCH = frozenset((errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV))
#: preadv2/pwritev2 flag: fail with EAGAIN rather than wait for the disk (reads: Linux
#: 4.14+; buffered writes: newer kernels and some filesystems only); 0 if absent.
_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
#: Filesystems whose file data is in memory: a read copies pages and waits for no disk
#: (a tmpfs page in swap waits for swap-in, as any page of the loop's own heap would).
_MEMORY_FILESYSTEMS = frozenset(("tmpfs", "ramfs"))
_MOUNTINFO = "/proc/self/mountinfo"


class BackingError(Exception):
    """A backing store that cannot be opened or used; the message says what to do."""


class Backing(Protocol):
    """What a LUN's data lives on. Offsets and lengths are in bytes."""

    @property
    def size(self) -> int: ...

    def readinto(self, offset: int, buffers: list[memoryview]) -> None:
        """Fill every buffer, in order, from `offset` on."""

    def read_cached(self, offset: int, buffers: list[memoryview]) -> bool:
        """Fill every buffer like `readinto`, but only if that needs no wait for a disk:
        the event loop may call this, and does `readinto` on a thread when it is False
        (the buffers' content is then unspecified)."""

    def write(self, offset: int, buffers: list[memoryview]) -> None:
        """Write every buffer, in order, from `offset` on."""

    def write_now(self, offset: int, buffers: list[memoryview]) -> bool:
        """Write like `write`, on the event loop, unless that would wait for a disk: False
        means do `write` on a thread (part of it may already be written; writing it again
        is harmless). A store that cannot tell says True and writes; `loop_io` times it."""

    def sync(self) -> None:
        """Make every completed write durable."""

    def punch(self, offset: int, length: int) -> None:
        """Deallocate the range; it reads as zeros afterwards."""

    def extent(self, offset: int) -> tuple[bool, int]:
        """Whether the byte at `offset` is allocated, and where (the byte offset) the
        run of the same kind ends. A store that cannot tell says allocated to the end."""

    def close(self) -> None: ...


def _check_range(size: int, offset: int, length: int) -> None:
    if offset < 0 or length < 0 or offset + length > size:
        raise BackingError(f"range {offset}+{length} is outside the {size}-byte store")


def _advance(buffers: list[memoryview], done: int) -> list[memoryview]:
    """The part of `buffers` not yet transferred after `done` bytes."""
    rest = list(buffers)
    while rest and done >= len(rest[0]):
        done -= len(rest[0])
        rest.pop(0)
    if rest and done:
        rest[0] = rest[0][done:]
    return rest


def _libc_fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


def _in_memory(info: os.stat_result) -> bool:
    """Whether the regular file `info` describes lives on a memory filesystem: its
    mount is the mountinfo line whose device (field 3, major:minor) is the file's
    st_dev, and the filesystem type follows the " - " separator. os.statvfs has no
    type field; a line not found, or no /proc, says no (the RWF_NOWAIT path)."""
    if not stat.S_ISREG(info.st_mode):
        return False  # a block device's st_dev is /dev's, not the disk's
    device = f"{os.major(info.st_dev)}:{os.minor(info.st_dev)}"
    try:
        with open(_MOUNTINFO, encoding="utf-8", errors="replace") as table:
            for line in table:
                fields = line.split(" - ", 1)
                head = fields[0].split()
                if len(fields) == 2 and len(head) > 2 and head[2] == device:
                    return fields[1].split(None, 1)[0] in _MEMORY_FILESYSTEMS
    except OSError:
        pass
    return False


class FileBacking:
    """A regular file or block device, opened once, read and written with pread/pwrite."""

    def __init__(self, path: str | os.PathLike[str], *, block_size: int = 512,
                 read_only: bool = False) -> None:
        self.path = os.fspath(path)
        self.read_only = read_only
        try:
            self._fd = os.open(self.path, (os.O_RDONLY if read_only else os.O_RDWR)
                               | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BackingError(
                f"LUN file {self.path} does not exist: create it with "
                f"`earmark serve --size 1G {self.path}`"
            ) from None
        except IsADirectoryError:
            raise BackingError(f"LUN file {self.path} is a directory, not a file") from None
        except PermissionError:
            mode = "reading" if read_only else "reading and writing"
            raise BackingError(
                f"LUN file {self.path} cannot be opened for {mode}: permission denied"
            ) from None
        try:
            self._size = self._measure(block_size)
        except BackingError:
            os.close(self._fd)
            raise
        self._fallocate = _libc_fallocate()
        self._in_memory = _in_memory(os.fstat(self._fd))
        self._nowait = bool(_RWF_NOWAIT)
        self._nowait_writes = bool(_RWF_NOWAIT)

    def _measure(self, block_size: int) -> int:
        info = os.fstat(self._fd)
        if stat.S_ISREG(info.st_mode):
            size = info.st_size
        elif stat.S_ISBLK(info.st_mode):
            size = os.lseek(self._fd, 0, os.SEEK_END)
        else:
            raise BackingError(f"LUN file {self.path} is neither a regular file nor a block device")
        if size == 0:
            raise BackingError(
                f"LUN file {self.path} is empty: give it a size, e.g. "
                f"`truncate -s 1G {self.path}`"
            )
        if size % block_size:
            raise BackingError(
                f"LUN file {self.path} is {size} bytes, not a multiple of the "
                f"{block_size}-byte block size"
            )
        return size

    def resize(self, size: int, block_size: int) -> None:
        """Grow or shrink the file (`earmark admin resize-lun`); the size checks are the
        opening's, and a size they refuse leaves the file as it was."""
        old = self._size
        if size <= 0 or size % block_size:
            raise BackingError(f"LUN size {size} B is not a positive multiple of the "
                               f"{block_size}-byte block size")
        os.ftruncate(self._fd, size)
        try:
            self._size = self._measure(block_size)
        except BackingError:
            os.ftruncate(self._fd, old)
            raise

    @property
    def size(self) -> int:
        return self._size

    def readinto(self, offset: int, buffers: list[memoryview]) -> None:
        total = sum(map(len, buffers))
        _check_range(self._size, offset, total)
        done = 0
        rest = [b for b in buffers if len(b)]
        while rest:
            n = os.preadv(self._fd, rest[:_IOV_MAX], offset + done)
            if n == 0:
                raise BackingError(f"LUN file {self.path} ended at {offset + done} "
                                   f"while {self._size} bytes were expected")
            done += n
            rest = _advance(rest, n)

    def read_cached(self, offset: int, buffers: list[memoryview]) -> bool:
        # One preadv2(RWF_NOWAIT): all of it from the page cache, or a refusal (EAGAIN,
        # or a short read when only part is cached). Cheaper than a thread round trip
        # by an order of magnitude for small reads, and never blocks the loop on a disk.
        # On a memory filesystem every read is a copy from memory: a plain preadv.
        in_memory = self._in_memory
        if not (in_memory or self._nowait) or len(buffers) > _IOV_MAX:
            return False
        total = sum(map(len, buffers))
        _check_range(self._size, offset, total)
        try:
            n = os.preadv(self._fd, buffers, offset, 0 if in_memory else _RWF_NOWAIT)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self._nowait = False  # this kernel or filesystem does not do it: stop asking
                return False
            raise
        return n == total

    def write(self, offset: int, buffers: list[memoryview]) -> None:
        total = sum(map(len, buffers))
        _check_range(self._size, offset, total)
        # Every small write the loop does comes here: one pwritev that takes it all is
        # the usual case, and the loop below is only for the rest of a short one.
        done = os.pwritev(self._fd, buffers, offset) if len(buffers) <= _IOV_MAX else 0
        if done == total:
            return
        rest = _advance([b for b in buffers if len(b)], done)
        while rest:
            n = os.pwritev(self._fd, rest[:_IOV_MAX], offset + done)
            done += n
            rest = _advance(rest, n)

    def write_now(self, offset: int, buffers: list[memoryview]) -> bool:
        if len(buffers) > _IOV_MAX:
            return False
        if self._nowait_writes:
            total = sum(map(len, buffers))
            _check_range(self._size, offset, total)
            try:
                return os.pwritev(self._fd, buffers, offset, _RWF_NOWAIT) == total
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self._nowait_writes = False  # not here (ext4 says EOPNOTSUPP): stop asking
        # No way to be refused: a plain buffered write, which the caller times.
        self.write(offset, buffers)
        return True

    def sync(self) -> None:
        os.fsync(self._fd)

    def punch(self, offset: int, length: int) -> None:
        _check_range(self._size, offset, length)
        if not length:
            return
        if self._fallocate is not None:
            mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
            if self._fallocate(self._fd, mode, offset, length) == 0:
                return
            err = ctypes.get_errno()
            if err not in _NO_PUNCH:
                raise OSError(err, os.strerror(err), self.path)
            self._fallocate = None  # this filesystem will not punch: stop asking
        self._write_zeros(offset, length)

    def extent(self, offset: int) -> tuple[bool, int]:
        _check_range(self._size, offset, 1)
        try:
            data = os.lseek(self._fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data from here to the end: one hole
                return False, self._size
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return True, self._size  # no map here (a block device, an old filesystem)
            raise
        if data > offset:
            return False, min(data, self._size)
        return True, min(os.lseek(self._fd, offset, os.SEEK_HOLE), self._size)

    def _write_zeros(self, offset: int, length: int) -> None:
        zeros = memoryview(bytes(min(length, _ZERO_CHUNK)))
        end = offset + length
        while offset < end:
            chunk = zeros[:min(len(zeros), end - offset)]
            self.write(offset, [chunk])
            offset += len(chunk)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class MemoryBacking:
    """A LUN held in a bytearray: for tests and the simulator, where no file should be."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise BackingError(f"a memory LUN needs a positive size, not {size}")
        # Anonymous memory, zeroed by the kernel as pages are first touched: a bytearray
        # is zeroed whole up front, which every simulated run paid for its LUN.
        self._data = mmap.mmap(-1, size)

    @property
    def size(self) -> int:
        return len(self._data)

    def readinto(self, offset: int, buffers: list[memoryview]) -> None:
        _check_range(self.size, offset, sum(map(len, buffers)))
        for b in buffers:
            b[:] = self._data[offset:offset + len(b)]
            offset += len(b)

    def read_cached(self, offset: int, buffers: list[memoryview]) -> bool:
        self.readinto(offset, buffers)  # memory never waits for a disk
        return True

    def write(self, offset: int, buffers: list[memoryview]) -> None:
        data = self._data
        _check_range(len(data), offset, sum(map(len, buffers)))  # `size`, without its call
        for b in buffers:
            data[offset:offset + len(b)] = b
            offset += len(b)

    def write_now(self, offset: int, buffers: list[memoryview]) -> bool:
        self.write(offset, buffers)  # memory never waits for a disk
        return True

    def sync(self) -> None:
        """Memory is as durable as it gets."""

    def punch(self, offset: int, length: int) -> None:
        _check_range(self.size, offset, length)
        self._data[offset:offset + length] = bytes(length)

    def extent(self, offset: int) -> tuple[bool, int]:
        _check_range(self.size, offset, 1)
        return True, self.size  # memory keeps no map: "mapped or unknown"

    def close(self) -> None:
        """Nothing to release: the memory goes with the object."""
