"""INQUIRY data: the standard page and the VPD pages an SBC-3 disk reports.

Version descriptors claim SAM-5, iSCSI, SPC-4 and SBC-3: initiators (libiscsi's
test suite among them) look for SBC-3 (0x04C0) to decide that READ CAPACITY (16),
the 60-byte BLOCK LIMITS page and thin provisioning are there to be tested.
"""

from __future__ import annotations

import struct

from .cdb import VpdPage
from .disk import VENDOR, Disk
from .sense import invalid_field_in_cdb

_VERSION_SPC4 = 0x06
_VERSION_DESCRIPTORS = (0x00A0, 0x0960, 0x0460, 0x04C0)  # SAM-5, iSCSI, SPC-4, SBC-3
_STANDARD_LENGTH = 96
_HISUP_RDF2 = 0x12
_CMDQUE = 0x02
_3PC = 0x08  # a copy manager (EXTENDED COPY) is reachable through this LU


def _ascii(text: str, width: int) -> bytes:
    return text.encode("ascii").ljust(width, b" ")[:width]


def standard_inquiry(disk: Disk) -> bytes:
    """96 bytes, so ADDITIONAL LENGTH (91) covers the version descriptors at 58..73."""
    rmb = 0x80 if disk.removable else 0
    head = bytes((0x00, rmb, _VERSION_SPC4, _HISUP_RDF2, _STANDARD_LENGTH - 5, _3PC, 0,
                  _CMDQUE))
    ident = _ascii(VENDOR, 8) + _ascii(disk.product, 16) + _ascii(disk.revision, 4)
    descriptors = struct.pack(">8H", *_VERSION_DESCRIPTORS, *(0,) * 4)
    body = head + ident + bytes(22) + descriptors
    return body.ljust(_STANDARD_LENGTH, b"\0")


def _page(code: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0x00, code, len(payload)) + payload


def supported_pages(disk: Disk) -> tuple[int, ...]:
    pages = [VpdPage.SUPPORTED_PAGES, VpdPage.UNIT_SERIAL_NUMBER,
             VpdPage.DEVICE_IDENTIFICATION, VpdPage.BLOCK_LIMITS,
             VpdPage.BLOCK_DEVICE_CHARACTERISTICS]
    if disk.thin_provisioning:
        pages.append(VpdPage.LOGICAL_BLOCK_PROVISIONING)
    return tuple(pages)


def _designator(code_set: int, designator_type: int, value: bytes) -> bytes:
    # association 0 (the logical unit), PIV 0: these name the LU, not a port
    return bytes((code_set, designator_type, 0, len(value))) + value


def lu_designators(disk: Disk) -> tuple[bytes, ...]:
    """The designation descriptors naming the LU: VPD page 83h lists them, and the copy
    manager resolves EXTENDED COPY's CSCD descriptors against the same bytes."""
    t10 = _ascii(VENDOR, 8) + disk.product.encode("ascii") + b" " + disk.serial.encode("ascii")
    return _designator(1, 3, disk.naa), _designator(2, 1, t10)


def _block_limits(disk: Disk) -> bytes:
    thin = disk.thin_provisioning
    return struct.pack(
        ">BBHIIIIIIIQIIIII",
        0,  # WSNZ=0: WRITE SAME with zero blocks means "to the end of the medium"
        min(disk.max_compare_blocks, 255, disk.max_transfer_blocks),
        1,  # optimal transfer length granularity
        disk.max_transfer_blocks,
        0,  # optimal transfer length: not reported
        0,  # maximum prefetch length: PRE-FETCH does no work, so no limit
        disk.max_unmap_blocks if thin else 0,
        disk.max_unmap_descriptors if thin else 0,
        1,  # optimal unmap granularity
        0,  # UGAVALID=0
        disk.max_write_same_blocks,
        # Atomic writes: the maximum, then ATOMIC ALIGNMENT and TRANSFER LENGTH
        # GRANULARITY 0 (none required); no atomic boundaries.
        disk.max_atomic_blocks, 0, 0, 0, 0,
    )


def _block_device_characteristics(disk: Disk) -> bytes:
    # Medium rotation rate 1: non-rotating medium. WABEREQ and WACEREQ 01b: after a
    # BLOCK or CRYPTO ERASE (offered on thin units) reads succeed, returning zeros.
    erased_reads = 0x50 if disk.thin_provisioning else 0
    return struct.pack(">HBBB", 1, 0, erased_reads, 0).ljust(0x3C, b"\0")


def _logical_block_provisioning() -> bytes:
    # LBPU | LBPWS | LBPWS10 | LBPRZ; provisioning type 2 (thin)
    return bytes((0, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0))


def vpd_page(disk: Disk, code: int) -> bytes:
    """The whole VPD page `code`; INVALID FIELD IN CDB (byte 2) if it is not supported."""
    if code not in supported_pages(disk):
        raise invalid_field_in_cdb(2, 7)
    if code == VpdPage.SUPPORTED_PAGES:
        payload = bytes(supported_pages(disk))
    elif code == VpdPage.UNIT_SERIAL_NUMBER:
        payload = disk.serial.encode("ascii")
    elif code == VpdPage.DEVICE_IDENTIFICATION:
        payload = b"".join(lu_designators(disk))
    elif code == VpdPage.BLOCK_LIMITS:
        payload = _block_limits(disk)
    elif code == VpdPage.BLOCK_DEVICE_CHARACTERISTICS:
        payload = _block_device_characteristics(disk)
    else:
        payload = _logical_block_provisioning()
    return _page(code, payload)
