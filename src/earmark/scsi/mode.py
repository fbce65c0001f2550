"""MODE SENSE data: header, block descriptor and the caching, control and IE pages.

One bit is changeable: the control page's SWP (software write protect), which MODE
SELECT sets on a writable unit to make it read-only until cleared (`mode_select`);
nothing is saved, so saved values are refused. The header's device-specific
parameter carries WP for a read-only disk and DPOFUA, which initiators read to
decide whether to send DPO/FUA at all.
"""

from __future__ import annotations

import struct

from .disk import Disk
from .sense import invalid_field_in_cdb, saving_parameters_not_supported

CACHING = 0x08
CONTROL = 0x0A
INFORMATIONAL_EXCEPTIONS = 0x1C
ALL_PAGES = 0x3F
PC_CURRENT, PC_CHANGEABLE, PC_DEFAULT, PC_SAVED = range(4)
_WP = 0x80
_DPOFUA = 0x10


def _caching(disk: Disk) -> bytes:
    wce = 0x04 if disk.write_cache else 0
    return bytes((CACHING, 0x12, wce)) + bytes(0x11)


#: Byte 4 of the control page.
SWP = 0x08


def _control(disk: Disk) -> bytes:
    # GLTSD=1 (no log parameters saved); QUEUE ALGORITHM MODIFIER=1 (unrestricted
    # reordering: the target may run commands out of order); D_SENSE=0 (fixed sense);
    # busy timeout 0xFFFF (unlimited).
    swp = SWP if disk.soft_write_protect else 0
    return bytes((CONTROL, 0x0A, 0x02, 0x10, swp, 0, 0, 0, 0xFF, 0xFF, 0, 0))


def changeable(disk: Disk, page: bytes) -> bytes:
    """The changeable-values image of `page`: SWP on a unit not read-only by its
    configuration, nothing else."""
    image = bytearray(len(page))
    image[:2] = page[:2]
    if page[0] == CONTROL and (disk.soft_write_protect or not disk.read_only):
        image[4] = SWP
    return bytes(image)


def _informational_exceptions() -> bytes:
    return bytes((INFORMATIONAL_EXCEPTIONS, 0x0A, 0x08)) + bytes(9)  # DEXCPT=1


def current_pages(disk: Disk) -> dict[int, bytes]:
    return {CACHING: _caching(disk), CONTROL: _control(disk),
            INFORMATIONAL_EXCEPTIONS: _informational_exceptions()}


def _pages(disk: Disk, page: int) -> list[bytes]:
    table = current_pages(disk)
    if page == ALL_PAGES:
        return list(table.values())
    if page not in table:
        raise invalid_field_in_cdb(2, 5)
    return [table[page]]


def mode_sense_data(
    disk: Disk, *, page: int, subpage: int, pc: int, dbd: bool, llbaa: bool, ten: bool
) -> bytes:
    """The whole MODE SENSE (6) or (10) reply, before the allocation-length cut."""
    if pc == PC_SAVED:
        raise saving_parameters_not_supported(2, 7)
    if subpage not in (0x00, 0xFF) or (subpage == 0xFF and page != ALL_PAGES):
        raise invalid_field_in_cdb(3, 7)
    pages = _pages(disk, page)
    if pc == PC_CHANGEABLE:
        pages = [changeable(disk, p) for p in pages]
    dsp = (_WP if disk.read_only else 0) | _DPOFUA
    descriptor = b""
    if not dbd:
        if llbaa and ten:
            descriptor = struct.pack(">QII", disk.num_blocks, 0, disk.block_size)
        else:
            descriptor = struct.pack(">II", min(disk.num_blocks, 0xFFFFFFFF),
                                     disk.block_size & 0xFFFFFF)
    body = descriptor + b"".join(pages)
    if ten:
        head = struct.pack(">HBBBBH", 6 + len(body), 0, dsp, 1 if len(descriptor) == 16 else 0,
                           0, len(descriptor))
    else:
        head = struct.pack(">BBBB", 3 + len(body), 0, dsp, len(descriptor))
    return head + body
