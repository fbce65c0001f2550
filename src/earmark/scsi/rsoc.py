"""REPORT SUPPORTED OPERATION CODES reply formats (SPC-4 6.35).

The command table in `sbc` is the single source of truth: the descriptors and
usage maps here are generated from it, so the report cannot claim a command or
a flag that the dispatcher does not handle.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

ALL_COMMANDS = 0
ONE_COMMAND = 1
ONE_COMMAND_WITH_SA = 2
ONE_COMMAND_EITHER = 3
_SUPPORTED = 0x03
_NOT_SUPPORTED = 0x01
_CTDP = 0x02
_SERVACTV = 0x01
# No nominal or recommended timeout is claimed: both zero mean "not specified".
_TIMEOUTS = struct.pack(">HBBII", 0x0A, 0, 0, 0, 0)


def all_commands(entries: Iterable[tuple[int, int | None, int]], rctd: bool) -> bytes:
    """Descriptors for (opcode, service action or None, CDB length) entries."""
    out = bytearray()
    for opcode, sa, length in entries:
        flags = (_CTDP if rctd else 0) | (_SERVACTV if sa is not None else 0)
        out += struct.pack(">BBHBBH", opcode, 0, sa or 0, 0, flags, length)
        if rctd:
            out += _TIMEOUTS
    return struct.pack(">I", len(out)) + bytes(out)


def one_command(usage: bytes | None, rctd: bool) -> bytes:
    """The one-command form: SUPPORT 011b with the CDB usage map, or 001b."""
    if usage is None:
        return bytes((0, _NOT_SUPPORTED, 0, 0))
    head = struct.pack(">BBH", 0, (0x80 if rctd else 0) | _SUPPORTED, len(usage))
    return head + usage + (_TIMEOUTS if rctd else b"")
