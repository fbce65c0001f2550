"""Reservations of one logical unit: SPC-2 RESERVE(6)/RELEASE(6) and persistent
reservations (SPC-4 5.9, PERSISTENT RESERVE IN/OUT), sans-I/O.

Reservations belong to the logical unit, not to a session: they are how one
initiator fences the others off, so every session on the unit consults the same
`Reservations`, with the I_T nexus (`Nexus`) of the command at hand. Sessions run
on one event loop, so no lock is needed.

Persistent registrations survive the loss of their I_T nexus (that is what
"persistent" means), but not a restart of the target: APTPL (persist through
power loss) is not offered, and REPORT CAPABILITIES says so (PTPL_C=0).
A RESERVE(6) reservation ends with its nexus, and with a logical unit reset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from .cdb import Opcode
from .sense import (
    ScsiError,
    SenseKey,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    parameter_list_length_error,
)

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_BASIC = struct.Struct(">QQIBBH")  # PROUT basic parameter list (SPC-4 6.16.3)
_BASIC_LENGTH = 24
_LU_SCOPE = 0
_APTPL = 0x01
_ALL_TG_PT = 0x04
_SPEC_I_PT = 0x08
_ISCSI_PROTOCOL = 0x5
_TPID_NAME_AND_ISID = 0x40  # TransportID FORMAT CODE 01b: "name,i,0xISID"


@dataclass(slots=True, frozen=True)
class Nexus:
    """An I_T nexus as SCSI sees it over iSCSI: the initiator port is the initiator's
    name plus the session's ISID (RFC 7143 §4.4.1); this target has one target port."""

    initiator: str
    isid: int

    def transport_id(self) -> bytes:
        """The iSCSI TransportID in its initiator-port form (SPC-4 7.6.4.6), padded
        to a multiple of four bytes as the standard requires."""
        name = f"{self.initiator},i,0x{self.isid:012x}".encode() + b"\0"
        name += bytes(-len(name) % 4)
        return struct.pack(">BBH", _TPID_NAME_AND_ISID | _ISCSI_PROTOCOL, 0, len(name)) + name


class PrType(IntEnum):
    WRITE_EXCLUSIVE = 1
    EXCLUSIVE_ACCESS = 3
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 5
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 6
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 7
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 8


class ProutAction(IntEnum):
    REGISTER = 0
    RESERVE = 1
    RELEASE = 2
    CLEAR = 3
    PREEMPT = 4
    PREEMPT_AND_ABORT = 5
    REGISTER_AND_IGNORE_EXISTING_KEY = 6


class PrinAction(IntEnum):
    READ_KEYS = 0
    READ_RESERVATION = 1
    REPORT_CAPABILITIES = 2
    READ_FULL_STATUS = 3


_ALL_REGISTRANTS = frozenset((PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
                              PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS))
#: Types under which a registered initiator may do everything (SPC-4 table 67).
_REGISTRANTS_MAY = frozenset((PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
                              PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY, *_ALL_REGISTRANTS))
_EXCLUSIVE_ACCESS = frozenset((PrType.EXCLUSIVE_ACCESS, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
                               PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS))
# REPORT CAPABILITIES: PERSISTENT RESERVATION TYPE MASK, bit per type (SPC-4 6.15.4).
_TYPE_MASK = {PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS: 0x8000,
              PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: 0x4000,
              PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY: 0x2000,
              PrType.EXCLUSIVE_ACCESS: 0x0800, PrType.WRITE_EXCLUSIVE: 0x0200,
              PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS: 0x0001}

Op = Opcode
#: Never in conflict with any reservation (SPC-4 table 66, SBC-4 table 13): they
#: describe the unit, or are the reservation commands, which apply their own rules.
_ALWAYS_ALLOWED = frozenset((Op.INQUIRY, Op.REPORT_LUNS, Op.REQUEST_SENSE,
                             Op.PERSISTENT_RESERVE_IN, Op.PERSISTENT_RESERVE_OUT,
                             Op.RESERVE_6, Op.RELEASE_6))
#: Also allowed under a persistent reservation (but not under RESERVE(6), which
#: SPC-2 lets through only the commands above).
_ALLOWED_UNDER_PR = frozenset((Op.TEST_UNIT_READY, Op.READ_CAPACITY_10, Op.MAINTENANCE_IN,
                               Op.SERVICE_ACTION_IN_16))
#: Commands that read the medium or the unit's state: they conflict only with the
#: Exclusive Access types. Everything else not allowed is treated as a write.
_READS = frozenset((Op.READ_6, Op.READ_10, Op.READ_12, Op.READ_16, Op.VERIFY_10, Op.VERIFY_12,
                    Op.VERIFY_16, Op.PRE_FETCH_10, Op.PRE_FETCH_16, Op.MODE_SENSE_6,
                    Op.MODE_SENSE_10, Op.READ_DEFECT_DATA_10, Op.READ_DEFECT_DATA_12))


class ReservationConflict(Exception):
    """The command ends with RESERVATION CONFLICT status (no sense data)."""


def invalid_release() -> ScsiError:
    """RELEASE naming another type or scope than the reservation's (SPC-4 5.9.11.2)."""
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x26, 0x04)


class Reservations:
    """The reservation state of one logical unit."""

    __slots__ = ("generation", "holder", "keys", "legacy", "pr_type", "preventing")

    def __init__(self) -> None:
        #: RESERVE(6) holder, if any.
        self.legacy: Nexus | None = None
        #: Registered I_T nexuses and their keys, in registration order.
        self.keys: dict[Nexus, int] = {}
        #: The persistent reservation's holder (any registrant for the all-registrants
        #: types, where this is only who reserved) and type; None when not reserved.
        self.holder: Nexus | None = None
        self.pr_type: PrType | None = None
        #: PRgeneration: counts registration changes (SPC-4 6.15.2).
        self.generation = 0
        #: The I_T nexuses preventing medium removal (PREVENT ALLOW MEDIUM REMOVAL):
        #: kept here because a prevention ends as RESERVE(6) does, at I_T nexus loss
        #: and at a reset (SBC-4 5.15), which the target tells this object about.
        self.preventing: set[Nexus] = set()

    # --------------------------------------------------------------- conflicts

    def check(self, cdb: bytes, nexus: Nexus) -> None:
        """Raise ReservationConflict if `nexus` may not run `cdb` now."""
        opcode = cdb[0]
        if opcode in _ALWAYS_ALLOWED:
            return
        if self.legacy is not None and self.legacy != nexus:
            raise ReservationConflict
        if self.pr_type is None or opcode in _ALLOWED_UNDER_PR or self._holds(nexus):
            return
        if self.pr_type in _REGISTRANTS_MAY and nexus in self.keys:
            return
        if opcode in _READS and self.pr_type not in _EXCLUSIVE_ACCESS:
            return
        raise ReservationConflict

    def _holds(self, nexus: Nexus) -> bool:
        if self.pr_type in _ALL_REGISTRANTS:
            return nexus in self.keys
        return self.holder == nexus

    # ------------------------------------------------------ RESERVE / RELEASE (6)

    def reserve6(self, nexus: Nexus) -> None:
        # SPC-4 5.9.3: with any registration present, RESERVE and RELEASE conflict.
        if self.keys or (self.legacy is not None and self.legacy != nexus):
            raise ReservationConflict
        self.legacy = nexus

    def release6(self, nexus: Nexus) -> None:
        """Releasing what another nexus holds is no error, and changes nothing."""
        if self.keys:
            raise ReservationConflict
        if self.legacy == nexus:
            self.legacy = None

    def nexus_lost(self, nexus: Nexus) -> None:
        """The nexus logged out or its connection dropped (SPC-2: releases RESERVE)."""
        if self.legacy == nexus:
            self.legacy = None
        self.preventing.discard(nexus)

    def reset(self) -> None:
        """Logical unit reset: RESERVE(6) and preventions end; persistent reservations stay."""
        self.legacy = None
        self.preventing.clear()

    # ------------------------------------------------------- PERSISTENT RESERVE IN

    def persistent_in(self, cdb: bytes, nexus: Nexus) -> bytes:
        """The PRIN parameter data, before cutting to the allocation length."""
        if self.legacy is not None and self.legacy != nexus:
            raise ReservationConflict
        action = cdb[1] & 0x1F
        head = _U32.pack(self.generation)
        if action == PrinAction.READ_KEYS:
            body = b"".join(struct.pack(">Q", key) for key in self.keys.values())
            return head + _U32.pack(len(body)) + body
        if action == PrinAction.READ_RESERVATION:
            if self.pr_type is None:
                return head + _U32.pack(0)
            holder = None if self.pr_type in _ALL_REGISTRANTS else self.holder
            key = self.keys.get(holder, 0) if holder is not None else 0
            return head + _U32.pack(16) + struct.pack(">QIBBH", key, 0, 0,
                                                      _LU_SCOPE << 4 | self.pr_type, 0)
        if action == PrinAction.REPORT_CAPABILITIES:
            mask = sum(_TYPE_MASK.values())
            # TMV=1 with the mask; ALLOW COMMANDS 000b; no CRH, SIP_C, ATP_C, PTPL_C.
            return struct.pack(">HBBHH", 8, 0, 0x80, mask, 0)
        if action == PrinAction.READ_FULL_STATUS:
            body = b""
            for who, key in self.keys.items():
                tid = who.transport_id()
                holds = self.pr_type is not None and self._holds(who)
                scope_type = _LU_SCOPE << 4 | self.pr_type if holds and self.pr_type else 0
                body += struct.pack(">QIBBIHI", key, 0, 0x01 if holds else 0, scope_type,
                                    0, 1, len(tid)) + tid
            return head + _U32.pack(len(body)) + body
        raise invalid_field_in_cdb(1, 4)

    # ------------------------------------------------------ PERSISTENT RESERVE OUT

    def persistent_out(self, cdb: bytes, nexus: Nexus, params: bytes | memoryview) -> None:
        """Carry out a PROUT; raise ScsiError or ReservationConflict when it fails."""
        if self.legacy is not None and self.legacy != nexus:
            raise ReservationConflict
        action, scope, kind = cdb[1] & 0x1F, cdb[2] >> 4, cdb[2] & 0x0F
        if action > ProutAction.REGISTER_AND_IGNORE_EXISTING_KEY:
            raise invalid_field_in_cdb(1, 4)  # REGISTER AND MOVE and beyond: not offered
        (length,) = _U32.unpack_from(cdb, 5)
        if length != _BASIC_LENGTH:
            raise parameter_list_length_error()
        if len(params) < _BASIC_LENGTH:
            raise parameter_list_length_error()
        key, sa_key, _, flags, _, _ = _BASIC.unpack_from(params)
        if flags & _SPEC_I_PT:
            raise invalid_field_in_parameter_list(20, 3)
        if flags & _ALL_TG_PT:
            raise invalid_field_in_parameter_list(20, 2)
        if flags & _APTPL:
            raise invalid_field_in_parameter_list(20, 0)
        if action in (ProutAction.REGISTER, ProutAction.REGISTER_AND_IGNORE_EXISTING_KEY):
            self._register(nexus, key, sa_key,
                           ignore=action == ProutAction.REGISTER_AND_IGNORE_EXISTING_KEY)
            return
        if self.keys.get(nexus) != key:
            raise ReservationConflict  # not registered, or with another key
        if action == ProutAction.CLEAR:
            self.keys.clear()
            self.holder = self.pr_type = None
            self.generation += 1
            return
        if action == ProutAction.RELEASE:
            self._release(nexus, scope, kind)
            return
        pr_type = _pr_type(scope, kind)
        if action == ProutAction.RESERVE:
            if self.pr_type is None:
                self.holder, self.pr_type = nexus, pr_type
            elif not self._holds(nexus) or self.pr_type != pr_type:
                raise ReservationConflict
            return
        self._preempt(nexus, sa_key, pr_type)

    def _register(self, nexus: Nexus, key: int, sa_key: int, *, ignore: bool) -> None:
        registered = self.keys.get(nexus)
        if not ignore and key != (registered or 0):
            raise ReservationConflict
        if sa_key:
            self.keys[nexus] = sa_key
        elif registered is None:
            return  # unregistered and asking for no key: nothing to do
        else:
            self._unregister(nexus)
        self.generation += 1

    def _unregister(self, nexus: Nexus) -> None:
        del self.keys[nexus]
        if self.pr_type is None:
            return
        if self.pr_type in _ALL_REGISTRANTS:
            if not self.keys:
                self.holder = self.pr_type = None
            elif self.holder == nexus:
                self.holder = next(iter(self.keys))
        elif self.holder == nexus:
            self.holder = self.pr_type = None

    def _release(self, nexus: Nexus, scope: int, kind: int) -> None:
        if self.pr_type is None or not self._holds(nexus):
            return  # nothing held by this nexus: GOOD, nothing changes
        if scope != _LU_SCOPE or kind != self.pr_type:
            raise invalid_release()
        self.holder = self.pr_type = None

    def _preempt(self, nexus: Nexus, sa_key: int, pr_type: PrType) -> None:
        """PREEMPT (and PREEMPT AND ABORT: tasks of a removed nexus end with its
        session's own abort handling, so both act alike here), SPC-4 5.9.11.4."""
        if self.pr_type in _ALL_REGISTRANTS and sa_key == 0:
            for who in [w for w in self.keys if w != nexus]:
                del self.keys[who]
            self.holder, self.pr_type = nexus, pr_type
            self.generation += 1
            return
        if sa_key == 0:
            raise invalid_field_in_parameter_list(8)
        holder_key = None
        if self.pr_type is not None and self.pr_type not in _ALL_REGISTRANTS:
            holder_key = self.keys.get(self.holder) if self.holder is not None else None
        victims = [w for w, k in self.keys.items() if k == sa_key and w != nexus]
        if not victims and holder_key != sa_key:
            raise ReservationConflict
        for who in victims:
            self._unregister(who)
        if holder_key == sa_key:
            self.holder, self.pr_type = nexus, pr_type
        self.generation += 1


def _pr_type(scope: int, kind: int) -> PrType:
    if scope != _LU_SCOPE:
        raise invalid_field_in_cdb(2, 7)
    try:
        return PrType(kind)
    except ValueError:
        raise invalid_field_in_cdb(2, 3) from None
