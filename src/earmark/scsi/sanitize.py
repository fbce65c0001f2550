"""SANITIZE (SBC-4 5.30): the CDB and the OVERWRITE parameter list in, a plan out.

Sans-I/O like the rest of `sbc`: every field is checked here, before a block is
touched, so a refused SANITIZE leaves the unit as it was. What the unit does
afterwards is the plan's (`plans.SanitizePlan`), run by the target's executor off
the event loop, one block of pattern reused for the whole unit.

IMMED is accepted, and the status comes once the sanitize is done: an early GOOD
would need the target to go on working for a command it has answered.
"""

from __future__ import annotations

from .cdb import SanitizeAction
from .disk import Disk
from .plans import GOOD, Outcome, SanitizePlan
from .sense import (
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    parameter_list_length_error,
    write_protected,
)

#: Byte 1: IMMED (7) and AUSE (5) are ours to read; bit 6 is reserved.
_RESERVED_BIT = 0x40
#: The OVERWRITE parameter list: byte 0 INVERT | TEST | OVERWRITE COUNT, byte 1
#: reserved, bytes 2-3 INITIALIZATION PATTERN LENGTH, then the pattern.
_HEADER = 4
_INVERT = 0x80
_TEST = 0x60
_COUNT = 0x1F


def list_length(cdb: bytes) -> int:
    """The PARAMETER LIST LENGTH field: the Data-Out the initiator sends."""
    return int.from_bytes(cdb[7:9], "big")


def plan(cdb: bytes, disk: Disk, data_out: bytes | memoryview) -> Outcome:
    """What this SANITIZE does to `disk`; `data_out` is its whole parameter list."""
    action = cdb[1] & 0x1F
    if cdb[1] & _RESERVED_BIT:
        raise invalid_field_in_cdb(1, 6)
    for i in range(2, 7):
        if cdb[i]:
            raise invalid_field_in_cdb(i, 7)
    length = list_length(cdb)
    if action == SanitizeAction.OVERWRITE:
        if not _HEADER < length <= disk.block_size + _HEADER:
            raise invalid_field_in_cdb(7, 7)
    elif length:
        raise invalid_field_in_cdb(7, 7)  # only OVERWRITE takes a parameter list
    if action == SanitizeAction.EXIT_FAILURE_MODE:
        return GOOD  # a sanitize here fails only with an error reported at once
    if disk.read_only:
        raise write_protected()
    if action != SanitizeAction.OVERWRITE:
        return SanitizePlan(overwrite=False)
    params = memoryview(data_out)[:length]
    if len(params) < length:  # the initiator sent less than the CDB announced
        raise parameter_list_length_error()
    return _overwrite(params, disk)


def _overwrite(params: memoryview, disk: Disk) -> SanitizePlan:
    flags = params[0]
    if flags & _TEST:
        raise invalid_field_in_parameter_list(0, 6)  # TEST: vendor specific, none here
    if not flags & _COUNT:
        raise invalid_field_in_parameter_list(0, 4)
    if params[1]:
        raise invalid_field_in_parameter_list(1, 7)
    pattern = int.from_bytes(params[2:4], "big")
    if not 0 < pattern <= min(disk.block_size, len(params) - _HEADER):
        raise invalid_field_in_parameter_list(2, 7)
    return SanitizePlan(overwrite=True, pattern_at=_HEADER, pattern=pattern,
                        passes=flags & _COUNT, invert=bool(flags & _INVERT))
