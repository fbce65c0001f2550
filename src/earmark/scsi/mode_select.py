"""MODE SELECT (6) and (10) (SPC-4 6.11, 6.12): the parameter list in, a plan out.

Every page sent must be one MODE SENSE reports, as long, and equal to its current
values outside the changeable bits (`mode.changeable`): the only one is SWP, so a
MODE SELECT either sets or clears software write protection or changes nothing.
The target's executor puts the new Disk (`protected`) in place, since a command
changes its unit only through a plan.
"""

from __future__ import annotations

import dataclasses

from .disk import Disk
from .mode import CONTROL, SWP, changeable, current_pages
from .plans import GOOD, ModeSelectPlan, Outcome
from .sense import (
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    parameter_list_length_error,
)

_PF = 0x10
_SP = 0x01


def list_length(cdb: bytes, ten: bool) -> int:
    return int.from_bytes(cdb[7:9], "big") if ten else cdb[4]


def plan(cdb: bytes, disk: Disk, data_out: bytes | memoryview, *, ten: bool) -> Outcome:
    """What this MODE SELECT does to `disk`; `data_out` is its whole parameter list."""
    if cdb[1] & _SP:
        raise invalid_field_in_cdb(1, 0)  # nothing is saved
    if cdb[1] & ~(_PF | _SP) or not cdb[1] & _PF:
        raise invalid_field_in_cdb(1, 4)  # only SPC-format pages (PF=1)
    length = list_length(cdb, ten)
    if not length:
        return GOOD
    params = memoryview(data_out)[:length]
    head = 8 if ten else 4
    if len(params) < length or length < head:
        raise parameter_list_length_error()
    descriptors = int.from_bytes(params[6:8], "big") if ten else params[3]
    medium_type = 2 if ten else 1
    if params[medium_type]:
        raise invalid_field_in_parameter_list(medium_type, 7)  # medium type 0 only
    if descriptors not in (0, 16 if ten and params[4] & 0x01 else 8):
        raise invalid_field_in_parameter_list(head - 1, 7)
    if descriptors and int.from_bytes(params[head + descriptors - 3:head + descriptors],
                                      "big") != disk.block_size:
        raise invalid_field_in_parameter_list(head + descriptors - 3, 7)  # BLOCK LENGTH
    swp = disk.soft_write_protect
    at = head + descriptors
    current = current_pages(disk)
    while at < length:
        if length - at < 2 or params[at] & 0x40:  # no room for a header, or a subpage
            raise invalid_field_in_parameter_list(at, 6)
        code, size = params[at] & 0x3F, params[at + 1] + 2
        page = current.get(code)
        if page is None or len(page) != size or at + size > length:
            raise invalid_field_in_parameter_list(at, 5)
        mask = changeable(disk, page)
        for i in range(2, size):
            if (params[at + i] ^ page[i]) & ~mask[i] & 0xFF:
                raise invalid_field_in_parameter_list(at + i, 7)
        if code == CONTROL:
            swp = bool(params[at + 4] & SWP)
        at += size
    if swp == disk.soft_write_protect:
        return GOOD
    return ModeSelectPlan(swp)


def protected(disk: Disk, swp: bool) -> Disk:
    """`disk` with software write protection set or cleared (only ever changeable on a
    unit its configuration left writable, so clearing it makes the unit writable)."""
    return dataclasses.replace(disk, read_only=swp, soft_write_protect=swp)
