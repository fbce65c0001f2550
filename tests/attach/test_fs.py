"""The one-file filesystem's answers and block arithmetic, as bytes (no mount)."""

from __future__ import annotations

import errno
import stat

import pytest

from earmark.attach import protocol as P
from earmark.attach.fs import DISK, ROOT, DiskFs, covering, negotiate, punch_plan
from earmark.attach.protocol import Op

FS = DiskFs(1 << 20, 512, uid=5, gid=6, time=1234)


def request(op: int, nodeid: int, args: bytes = b"") -> memoryview:
    buf = bytearray(P.IN_HEADER.size + len(args))
    P.IN_HEADER.pack_into(buf, 0, len(buf), op, 77, nodeid, 0, 0, 0, 0, 0)
    buf[P.IN_HEADER.size:] = args
    return memoryview(buf)


def answer(op: int, nodeid: int, args: bytes = b"") -> tuple[bytes, int]:
    buf = request(op, nodeid, args)
    into = memoryview(bytearray(4096))
    n, error = FS.answer(P.parse(buf, len(buf)), into)
    return bytes(into[:n]), error


def test_lookup_finds_disk_and_nothing_else() -> None:
    body, error = answer(Op.LOOKUP, ROOT, b"disk\0")
    assert error == 0 and len(body) == P.ENTRY_BYTES
    attr = P.ATTR.unpack_from(body, 40)
    assert (attr[0], attr[1], stat.S_ISREG(attr[9]), attr[11], attr[12]) == (DISK, 1 << 20,
                                                                              True, 5, 6)
    assert answer(Op.LOOKUP, ROOT, b"other\0") == (b"", errno.ENOENT)


def test_the_directory_lists_dot_dotdot_and_disk_from_any_offset() -> None:
    def names(offset: int) -> list[bytes]:
        body, _ = answer(Op.READDIR, ROOT, P.READ_IN.pack(0, offset, 4096, 0) + bytes(16))
        out, at = [], 0
        while at < len(body):
            _, _, n, _ = P.DIRENT_HEADER.unpack_from(body, at)
            out.append(body[at + 24:at + 24 + n])
            at += -(-(24 + n) // 8) * 8
        return out

    assert names(0) == [b".", b"..", b"disk"]
    assert names(2) == [b"disk"]
    assert names(3) == []


def test_the_size_cannot_change_and_unknown_requests_are_enosys() -> None:
    grow = P.SETATTR_IN.pack(P.FATTR_SIZE, 0, 0, 2 << 20) + bytes(64)
    assert answer(Op.SETATTR, DISK, grow)[1] == errno.EPERM
    assert answer(999, DISK)[1] == errno.ENOSYS


def test_open_asks_for_direct_io_with_parallel_writes() -> None:
    body, error = answer(Op.OPEN, DISK, bytes(8))
    _, flags = P.OPEN_OUT.unpack(body)
    assert error == 0 and flags == P.FOPEN_DIRECT_IO | P.FOPEN_PARALLEL_DIRECT_WRITES
    assert answer(Op.OPEN, ROOT, bytes(8))[1] == errno.EISDIR


def test_init_keeps_the_kernel_default_without_max_pages() -> None:
    into = memoryview(bytearray(64))
    for offered, flags, agreed in ((1 << 18, P.MAX_PAGES, 1 << 18), (1 << 18, 0, 1 << 17)):
        args = P.INIT_IN.pack(7, 38, 1 << 20, flags) + bytes(48)
        buf = request(Op.INIT, 0, args)
        assert negotiate(P.parse(buf, len(buf)), into, offered, 8).max_write == agreed
        assert P.INIT_OUT.unpack(into)[6] == agreed


def test_a_request_whose_length_lies_is_refused() -> None:
    buf = request(Op.GETATTR, DISK, bytes(16))
    with pytest.raises(P.ProtocolError):
        P.parse(buf, len(buf) - 1)


@pytest.mark.parametrize(("offset", "size", "expect"), [
    (0, 512, (0, 512)), (100, 10, (0, 512)), (500, 24, (0, 1024)), (1024, 2048, (1024, 2048))])
def test_covering_blocks(offset: int, size: int, expect: tuple[int, int]) -> None:
    assert covering(offset, size, 512) == expect


def test_a_hole_is_whole_blocks_unmapped_and_its_edges_zeroed() -> None:
    assert punch_plan(100, 2000, 512, 1 << 20) == ((512, 1536), [(100, 412), (2048, 52)])
    assert punch_plan(100, 50, 512, 1 << 20) == ((512, 0), [(100, 50)])
    assert punch_plan(0, 1 << 30, 512, 1 << 20) == ((0, 1 << 20), [])  # cut at the end
