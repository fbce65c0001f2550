"""A block call's plan, without a socket: the range checked in words, split into commands of
at most MAX_IO_BYTES, each with its CDB and its piece of the caller's buffer."""

from __future__ import annotations

import struct

import pytest

from earmark.initiator.device import MAX_IO_BYTES, DeviceBase
from earmark.scsi import cdb as C

BLOCK = 512
BLOCKS = 8192  # 4 MiB


def device() -> DeviceBase:
    dev = DeviceBase("iscsi://127.0.0.1/iqn.2026-11.org.earmark:t/0")
    dev._geometry_from(memoryview(struct.pack(">QI", BLOCKS - 1, BLOCK) + bytes(20)))
    return dev


def test_a_call_of_one_command_is_that_command_on_the_whole_buffer() -> None:
    dev = device()
    buf = memoryview(bytearray(4096))
    assert dev.size == BLOCKS * BLOCK
    assert dev.plan(8 * BLOCK, buf, False) == [(C.read_16(8, 8), buf)]
    [(cdb, part)] = dev.plan(0, buf, True)
    assert cdb == C.write_16(0, 8) and part.obj is buf.obj and len(part) == 4096


def test_a_call_of_one_command_needs_no_plan_and_a_larger_one_says_so() -> None:
    dev = device()
    assert dev.command(8 * BLOCK, memoryview(bytearray(4096)), True) == C.write_16(8, 8)
    assert dev.command(0, memoryview(bytearray(MAX_IO_BYTES)), False) == C.read_16(0, 2048)
    assert dev.command(0, memoryview(bytearray(MAX_IO_BYTES + BLOCK)), False) is None


def test_a_larger_call_is_commands_of_max_io_bytes_over_slices_of_the_buffer() -> None:
    dev = device()
    buf = memoryview(bytearray(2 * MAX_IO_BYTES + 4096))
    plan = dev.plan(BLOCK, buf, True)
    per = MAX_IO_BYTES // BLOCK
    assert [cdb for cdb, _ in plan] == [C.write_16(1, per), C.write_16(1 + per, per),
                                        C.write_16(1 + 2 * per, 8)]
    assert [len(part) for _, part in plan] == [MAX_IO_BYTES, MAX_IO_BYTES, 4096]
    assert all(part.obj is buf.obj for _, part in plan)  # slices, never copies


@pytest.mark.parametrize(("offset", "length", "words"), [
    (100, 512, "multiples of the 512 B block size"),
    (0, 700, "multiples of the 512 B block size"),
    (-512, 512, "multiples of the 512 B block size"),
    ((BLOCKS - 1) * BLOCK, 1024, "run past the end of the 4194304 B device"),
])
def test_a_range_that_is_not_whole_blocks_inside_the_device_is_refused_in_words(
        offset: int, length: int, words: str) -> None:
    dev = device()
    with pytest.raises(ValueError, match=words):
        dev.plan(offset, memoryview(bytearray(length)), False)
    with pytest.raises(ValueError, match=words):
        dev.command(offset, memoryview(bytearray(length)), True)
    with pytest.raises(ValueError, match=words):
        dev.unmap(offset, length)


def test_unmap_names_the_range_in_extents_and_page_commands_the_pages() -> None:
    dev = device()
    cdb, params = dev.unmap(4 * BLOCK, 16 * BLOCK)
    assert bytes(params) == C.unmap_parameter_list([(4, 16)])
    assert cdb == C.unmap(len(params))
    assert dev.page_command(4096, 8192, True) == C.write_16(8, 16)
    assert dev.page_command(4096, 4096, False) == C.read_16(8, 8)
