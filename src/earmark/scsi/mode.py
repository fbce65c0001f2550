"""MODE SENSE data: header, block descriptor and the caching, control and IE pages.

Nothing is changeable (the changeable-values image is all zeros) and nothing is
saved, so MODE SELECT has nothing to do and saved values are refused. The header's
device-specific parameter carries WP for a read-only disk and DPOFUA, which
initiators read to decide whether to send DPO/FUA at all.
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


def _control() -> bytes:
    # GLTSD=1 (no log parameters saved); QUEUE ALGORITHM MODIFIER=1 (unrestricted
    # reordering: the target may run commands out of order); D_SENSE=0 (fixed sense);
    # busy timeout 0xFFFF (unlimited).
    return bytes((CONTROL, 0x0A, 0x02, 0x10, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0))


def _informational_exceptions() -> bytes:
    return bytes((INFORMATIONAL_EXCEPTIONS, 0x0A, 0x08)) + bytes(9)  # DEXCPT=1


def _pages(disk: Disk, page: int) -> list[bytes]:
    table = {CACHING: _caching(disk), CONTROL: _control(),
             INFORMATIONAL_EXCEPTIONS: _informational_exceptions()}
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
        pages = [p[:2] + bytes(len(p) - 2) for p in pages]
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
