"""The SBC-3 disk command set for the target: CDB in, Reply or I/O plan out.

Sans-I/O: `execute` decides from the CDB and the Disk alone (plus, for UNMAP, the
parameter list already received), and hands the runtime either a finished Reply
or a plan naming the blocks to move. Before that, the target's admission calls
`data_out_length` / `data_in_length` to learn how much buffer to reserve; those
never raise, because admission must not be where a bad CDB is reported: the
command is admitted with nothing reserved, and `execute` reports the sense.

Dispatch is one dict lookup on the opcode (and service action); READ/WRITE (10)
and (16) are unpacked with precompiled structs, since they are most of the traffic.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from . import mode_select, rsoc, sanitize, xcopy
from .cdb import Opcode, SanitizeAction, ServiceAction
from .disk import Disk, Need
from .inquiry import standard_inquiry, vpd_page
from .lun import lun_to_u64
from .mode import mode_sense_data
from .plans import (
    GOOD,
    CompareAndWritePlan,
    Extent,
    LbaStatusPlan,
    MediumPlan,
    OrWritePlan,
    Outcome,
    ReadPlan,
    Reply,
    SyncPlan,
    UnmapPlan,
    VerifyPlan,
    WritePlan,
    WriteSamePlan,
)
from .reservations import (
    Nexus,
    PrinAction,
    ProutAction,
    ReservationConflict,
    Reservations,
)
from .sense import (
    Asc,
    ScsiError,
    ScsiStatus,
    SenseKey,
    build_descriptor_sense,
    build_fixed_sense,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    invalid_opcode,
    lba_out_of_range,
    logical_unit_not_supported,
    medium_not_present,
    medium_removal_prevented,
    parameter_list_length_error,
    sanitize_in_progress,
    write_protected,
)
from .xcopy import CopyManager, CopySa


@dataclass(slots=True)
class _Context:
    """What a command may need beyond its CDB and disk. Not frozen: one is built per
    command, and a frozen dataclass pays a ``object.__setattr__`` call per field."""

    luns: Sequence[int]
    data_out: bytes | memoryview
    edtl: int | None
    nexus: Nexus
    reservations: Reservations
    peers: Mapping[int, Disk]
    copies: CopyManager


_Run = Callable[[bytes, Disk, _Context], Outcome]
#: Who sends a CDB when the caller does not say (tests of single commands).
ANONYMOUS = Nexus("", 0)
_Length = Callable[[bytes, Disk], int]


def _none(cdb: bytes, disk: Disk) -> int:
    return 0


@dataclass(slots=True, frozen=True)
class _Command:
    length: int
    usage: bytes  # CDB usage data for REPORT SUPPORTED OPERATION CODES
    run: _Run
    data_in: _Length = _none
    data_out: _Length = _none
    thin_only: bool = False
    atomic_only: bool = False
    removable_only: bool = False
    #: False for the commands a unit answers while its medium is busy (a sanitize).
    medium: bool = True
    #: What the command needs of a disk (`disk.Need`), against `Disk.lacks`: one test
    #: per command decides both whether it is offered and whether it can run now.
    needs: int = field(init=False, repr=False, compare=False)
    #: Its run reads only the CDB and the disk (a read, write or verify): `execute`
    #: builds no context for it, one object fewer per command.
    blind: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blind", self.run in _BLIND_RUNS)
        needs = ((Need.THIN if self.thin_only else 0) | (Need.ATOMIC if self.atomic_only else 0)
                 | (Need.REMOVABLE if self.removable_only else 0))
        # Plain ints: an IntFlag's & is a Python call, this one is per command.
        object.__setattr__(self, "needs", int(needs | (Need.MEDIUM if self.medium else 0)))

    def offered(self, disk: Disk) -> bool:
        return not self.needs & disk.lacks & ~Need.MEDIUM


_S6 = struct.Struct(">BBHBB")
_S10 = struct.Struct(">BBIBHB")
_S12 = struct.Struct(">BBIIBB")
_S16 = struct.Struct(">BBQIBB")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_PROTECT = 0xE0
_DPO_FUA = 0x18
_FUA = 0x08
_NACA = 0x04


def _fields6(cdb: bytes) -> tuple[int, int, int]:
    _, hi, lo, n, _ = _S6.unpack_from(cdb)
    return 0, (hi & 0x1F) << 16 | lo, n or 256


def _fields10(cdb: bytes) -> tuple[int, int, int]:
    _, flags, lba, _, n, _ = _S10.unpack_from(cdb)
    return flags, lba, n


def _fields12(cdb: bytes) -> tuple[int, int, int]:
    _, flags, lba, n, _, _ = _S12.unpack_from(cdb)
    return flags, lba, n


def _fields16(cdb: bytes) -> tuple[int, int, int]:
    _, flags, lba, n, _, _ = _S16.unpack_from(cdb)
    return flags, lba, n


_Fields = Callable[[bytes], tuple[int, int, int]]
# Where the TRANSFER LENGTH field starts, for the field pointer of a too-long transfer.
_LENGTH_BYTE = {6: 4, 10: 7, 12: 6, 16: 10}


def _check_range(lba: int, n: int, disk: Disk) -> None:
    if lba + n > disk.num_blocks:
        raise lba_out_of_range()


def _check_transfer(n: int, disk: Disk, cdb_len: int) -> None:
    if n > disk.max_transfer_blocks:
        raise invalid_field_in_cdb(_LENGTH_BYTE[cdb_len], 7)


def _check_blocks(lba: int, n: int, disk: Disk, cdb_len: int) -> None:
    """`_check_range`, then `_check_transfer`: one call for every read and write that
    passes both, the two rules' own calls only for one that fails."""
    if lba + n > disk.num_blocks or n > disk.max_transfer_blocks:
        _check_range(lba, n, disk)
        _check_transfer(n, disk, cdb_len)


#: The runs `_reader`, `_writer` and `_verifier` made, which never look at their context,
#: and the context they are given instead of one built for them.
_BLIND_RUNS: set[_Run] = set()
_BLIND_CONTEXT = _Context((), b"", None, ANONYMOUS, Reservations(), {}, CopyManager())


def _blind(run: _Run) -> _Run:
    _BLIND_RUNS.add(run)
    return run


def _reader(fields: _Fields, cdb_len: int) -> _Run:
    def run(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
        flags, lba, n = fields(cdb)
        if flags & _PROTECT:
            raise invalid_field_in_cdb(1, 7)
        _check_blocks(lba, n, disk, cdb_len)
        return ReadPlan(lba, n) if n else GOOD

    return _blind(run)


def _writer(fields: _Fields, cdb_len: int, *, verify: bool = False) -> _Run:
    def run(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
        flags, lba, n = fields(cdb)
        if flags & _PROTECT:
            raise invalid_field_in_cdb(1, 7)
        if verify and flags & 0x06 == 0x04:
            raise invalid_field_in_cdb(1, 2)  # BYTCHK 10b is reserved
        if disk.read_only:
            raise write_protected()
        _check_blocks(lba, n, disk, cdb_len)
        if not n:
            return GOOD
        # WRITE AND VERIFY: the medium is the backing store, so verifying what was
        # written means making sure it reached it: FUA.
        fua = verify or bool(flags & _FUA) or not disk.write_cache
        return WritePlan(lba, n, fua)

    return _blind(run)


def _verifier(fields: _Fields, cdb_len: int) -> _Run:
    def run(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
        flags, lba, n = fields(cdb)
        if flags & _PROTECT:
            raise invalid_field_in_cdb(1, 7)
        bytchk = (flags >> 1) & 3
        if bytchk == 2:
            raise invalid_field_in_cdb(1, 2)
        _check_blocks(lba, n, disk, cdb_len)
        return VerifyPlan(lba, n, bytchk) if n else GOOD

    return _blind(run)


def _blocks(fields: _Fields) -> _Length:
    def length(cdb: bytes, disk: Disk) -> int:
        return fields(cdb)[2] * disk.block_size

    return length


def _verify_out(fields: _Fields) -> _Length:
    def length(cdb: bytes, disk: Disk) -> int:
        flags, _, n = fields(cdb)
        bytchk = (flags >> 1) & 3
        return n * disk.block_size if bytchk == 1 else disk.block_size if bytchk == 3 else 0

    return length


def _syncer(fields: _Fields) -> _Run:
    def run(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
        _, lba, n = fields(cdb)
        _check_range(lba, n, disk)
        return SyncPlan()

    return run


def _prefetcher(fields: _Fields) -> _Run:
    """PRE-FETCH answers GOOD ("did not all fit in the cache") without reading:
    CONDITION MET would promise the blocks are cached, and the target has no cache
    of its own beyond the host's page cache."""

    def run(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
        _, lba, n = fields(cdb)
        _check_range(lba, n, disk)
        return GOOD

    return run


def _write_same(fields: _Fields, sixteen: bool) -> _Run:
    def run(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
        flags, lba, n = fields(cdb)
        if flags & _PROTECT:
            raise invalid_field_in_cdb(1, 7)
        if flags & 0x06:
            raise invalid_field_in_cdb(1, 2)  # PBDATA/LBDATA: obsolete, not supported
        unmap, anchor, ndob = bool(flags & 0x08), bool(flags & 0x10), bool(flags & 0x01)
        if anchor:
            raise invalid_field_in_cdb(1, 4)  # ANC_SUP=0
        if ndob and not sixteen:
            raise invalid_field_in_cdb(1, 0)
        if unmap and not disk.thin_provisioning:
            raise invalid_field_in_cdb(1, 3)
        if disk.read_only:
            raise write_protected()
        if lba > disk.num_blocks:
            raise lba_out_of_range()
        if n == 0:
            n = disk.num_blocks - lba
        _check_range(lba, n, disk)
        if n > disk.max_write_same_blocks:
            raise invalid_field_in_cdb(10 if sixteen else 7, 7)
        expected = 0 if ndob else disk.block_size
        if ctx.edtl is not None and ctx.edtl != expected:
            raise invalid_field_in_cdb(_LENGTH_BYTE[16 if sixteen else 10], 7)
        return WriteSamePlan(lba, n, unmap, ndob) if n else GOOD

    return run


def _write_same_out(fields: _Fields) -> _Length:
    def length(cdb: bytes, disk: Disk) -> int:
        return 0 if fields(cdb)[0] & 0x01 else disk.block_size

    return length


_UNMAP_HEADER = struct.Struct(">HHI")
_UNMAP_DESCRIPTOR = struct.Struct(">QII")


def _unmap(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    if cdb[1] & 0x01:
        raise invalid_field_in_cdb(1, 0)  # ANCHOR: ANC_SUP=0
    if disk.read_only:
        raise write_protected()
    (length,) = _U16.unpack_from(cdb, 7)
    if length == 0:
        return GOOD
    params = memoryview(ctx.data_out)[:length]
    if len(params) < 8:
        raise parameter_list_length_error()
    _, descriptor_bytes, _ = _UNMAP_HEADER.unpack_from(params)
    count = min(descriptor_bytes, len(params) - 8) // 16
    if count > disk.max_unmap_descriptors:
        raise invalid_field_in_parameter_list(2, 7)
    extents: list[Extent] = []
    total = 0
    for i in range(count):
        lba, n, _ = _UNMAP_DESCRIPTOR.unpack_from(params, 8 + 16 * i)
        _check_range(lba, n, disk)
        total += n
        if total > disk.max_unmap_blocks:
            raise invalid_field_in_parameter_list(8 + 16 * i + 8, 7)
        if n:
            extents.append(Extent(lba, n))
    return UnmapPlan(tuple(extents)) if extents else GOOD


def _unmap_out(cdb: bytes, disk: Disk) -> int:
    (length,) = _U16.unpack_from(cdb, 7)
    return int(length)


def _compare_and_write(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    flags, lba, n = cdb[1], int.from_bytes(cdb[2:10], "big"), cdb[13]
    if flags & _PROTECT:
        raise invalid_field_in_cdb(1, 7)
    if disk.read_only:
        raise write_protected()
    if n > min(disk.max_compare_blocks, disk.max_transfer_blocks):
        raise invalid_field_in_cdb(13, 7)
    _check_range(lba, n, disk)
    # NUMBER OF LOGICAL BLOCKS is 8 bits: an initiator that asked for 256 blocks
    # sends 0 with 512 blocks of data. Refuse the mismatch instead of ignoring it.
    if ctx.edtl is not None and ctx.edtl != 2 * n * disk.block_size:
        raise invalid_field_in_cdb(13, 7)
    if not n:
        return GOOD
    return CompareAndWritePlan(lba, n, bool(flags & _FUA) or not disk.write_cache)


def _compare_and_write_out(cdb: bytes, disk: Disk) -> int:
    return 2 * cdb[13] * disk.block_size


def _orwrite(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    flags, lba, n = _fields16(cdb)
    if flags & _PROTECT:
        raise invalid_field_in_cdb(1, 7)
    if disk.read_only:
        raise write_protected()
    _check_range(lba, n, disk)
    _check_transfer(n, disk, 16)
    if not n:
        return GOOD
    return OrWritePlan(lba, n, bool(flags & _FUA) or not disk.write_cache)


def _write_atomic(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    flags, lba, n = cdb[1], int.from_bytes(cdb[2:10], "big"), int(_U16.unpack_from(cdb, 12)[0])
    if flags & _PROTECT:
        raise invalid_field_in_cdb(1, 7)
    if disk.read_only:
        raise write_protected()
    _check_range(lba, n, disk)
    if n > disk.max_atomic_blocks:
        raise invalid_field_in_cdb(12, 7)
    if not n:
        return GOOD
    return WritePlan(lba, n, bool(flags & _FUA) or not disk.write_cache, atomic=True)


def _write_atomic_out(cdb: bytes, disk: Disk) -> int:
    return int(_U16.unpack_from(cdb, 12)[0]) * disk.block_size


def _extended_copy(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    plan = xcopy.parse(cdb, ctx.data_out, ctx.peers)
    if plan is None:
        return GOOD
    ctx.copies.begin(ctx.nexus, plan)
    if not plan.segments:  # a valid list that moves nothing: done already
        ctx.copies.finish(ctx.nexus, plan, ok=True)
        return GOOD
    return plan


def _extended_copy_out(cdb: bytes, disk: Disk) -> int:
    return xcopy.parameter_list_bytes(cdb)


def _receive_copy_results(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    return _cut(ctx.copies.results(cdb, ctx.nexus, disk), _u32_at10(cdb, disk))


def _cut(data: bytes, allocation_length: int) -> Reply:
    return Reply(data[:allocation_length])


def _test_unit_ready(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    return GOOD


def _request_sense(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    """No sense is pending but for the unit's state (a sanitize in progress): errors are
    reported with the command (autosense)."""
    key, code = ((SenseKey.NOT_READY, Asc.SANITIZE_IN_PROGRESS) if disk.sanitizing
                 else (SenseKey.NO_SENSE, Asc.NO_ADDITIONAL_SENSE))
    if cdb[1] & 0x01:
        return _cut(build_descriptor_sense(key, code), cdb[4])
    return _cut(build_fixed_sense(key, code), cdb[4])


def _inquiry(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    flags, page = cdb[1], cdb[2]
    if flags & 0x02:
        raise invalid_field_in_cdb(1, 1)  # CMDDT: obsolete
    (allocation,) = _U16.unpack_from(cdb, 3)
    if not flags & 0x01:
        if page:
            raise invalid_field_in_cdb(2, 7)
        return _cut(standard_inquiry(disk), allocation)
    return _cut(vpd_page(disk, page), allocation)


def _byte4(cdb: bytes, disk: Disk) -> int:
    return cdb[4]


def _u16_at3(cdb: bytes, disk: Disk) -> int:
    return int(_U16.unpack_from(cdb, 3)[0])


def _u16_at7(cdb: bytes, disk: Disk) -> int:
    return int(_U16.unpack_from(cdb, 7)[0])


def _u32_at6(cdb: bytes, disk: Disk) -> int:
    return int(_U32.unpack_from(cdb, 6)[0])


def _u32_at10(cdb: bytes, disk: Disk) -> int:
    return int(_U32.unpack_from(cdb, 10)[0])


def _mode_sense(ten: bool) -> _Run:
    def run(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
        flags, pc, page, subpage = cdb[1], cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
        data = mode_sense_data(
            disk, page=page, subpage=subpage, pc=pc, dbd=bool(flags & 0x08),
            llbaa=bool(flags & 0x10), ten=ten,
        )
        return _cut(data, _u16_at7(cdb, disk) if ten else cdb[4])

    return run


def _mode_select(ten: bool) -> _Run:
    def run(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
        return mode_select.plan(cdb, disk, ctx.data_out, ten=ten)

    return run


def _start_stop_unit(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    """A fixed disk cannot eject; stopping it (START=0) flushes the write cache first,
    unless NO_FLUSH. The unit is not modelled as stopped afterwards: SBC lets any
    medium-access command start it again, which is where it already is. A removable
    medium is ejected (START=0) or loaded (START=1) by LOEJ, unless an I_T nexus
    prevents its removal; the power condition, when given, wins over LOEJ (SBC-4 5.27)."""
    action = cdb[4]
    if action & 0x02 and not action >> 4:
        if not disk.removable:
            raise invalid_field_in_cdb(4, 1)  # LOEJ on a medium that is not removable
        if ctx.reservations.preventing:
            raise medium_removal_prevented()
        load = bool(action & 0x01)
        return MediumPlan(loaded=load) if load == disk.ejected else GOOD
    if disk.ejected:
        raise medium_not_present()
    if not action & 0x01 and not action & 0x04 and not action >> 4:
        return SyncPlan()
    return GOOD


def _prevent_allow(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    """PREVENT 01b: this I_T nexus prevents the medium's removal until it allows it
    again (00b) or the prevention ends as RESERVE(6) does (`Reservations.preventing`)."""
    prevent = cdb[4] & 0x03
    if prevent > 1:
        raise invalid_field_in_cdb(4, 1)  # 10b, 11b: obsolete (for changers)
    if prevent:
        ctx.reservations.preventing.add(ctx.nexus)
    else:
        ctx.reservations.preventing.discard(ctx.nexus)
    return GOOD


def _read_capacity_10(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    (lba,) = _U32.unpack_from(cdb, 2)
    if lba and not cdb[8] & 0x01:
        raise invalid_field_in_cdb(2, 7)  # LBA given without PMI
    return Reply(struct.pack(">II", min(disk.num_blocks - 1, 0xFFFFFFFF), disk.block_size))


def _read_capacity_16(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    flags = 0xC0 if disk.thin_provisioning else 0  # LBPME | LBPRZ
    data = struct.pack(">QIBBBB", disk.num_blocks - 1, disk.block_size, 0, 0, flags, 0)
    return _cut(data.ljust(32, b"\0"), _u32_at10(cdb, disk))


#: GET LBA STATUS answers with one descriptor: its 8-byte header and 16 bytes.
LBA_STATUS_BYTES = 24


def _get_lba_status(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    """Where the blocks from the LBA on stand is the backing store's to say (a file's
    holes are deallocated blocks): a plan, answered by the executor with one descriptor
    (SBC-4 5.7), as many as the initiator must expect at least."""
    lba = int.from_bytes(cdb[2:10], "big")
    if lba >= disk.num_blocks:
        raise lba_out_of_range()
    length = min(_u32_at10(cdb, disk), LBA_STATUS_BYTES)
    return LbaStatusPlan(lba, length) if length else GOOD


def lba_status(lba: int, nblocks: int, deallocated: bool) -> bytes:
    """GET LBA STATUS parameter data: one descriptor of `nblocks` from `lba`
    (capped at the field's 32 bits; the initiator asks again from where it ends)."""
    return struct.pack(">IIQIBBH", LBA_STATUS_BYTES - 4, 0, lba, min(nblocks, 0xFFFFFFFF),
                       1 if deallocated else 0, 0, 0)


def _sanitize(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    return sanitize.plan(cdb, disk, ctx.data_out)


def _sanitize_out(cdb: bytes, disk: Disk) -> int:
    return sanitize.list_length(cdb)


def _reserve_6(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    if cdb[1] & 0x01:
        raise invalid_field_in_cdb(1, 0)  # 3RDPTY: third-party reservations are obsolete
    ctx.reservations.reserve6(ctx.nexus)
    return GOOD


def _release_6(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    if cdb[1] & 0x01:
        raise invalid_field_in_cdb(1, 0)
    ctx.reservations.release6(ctx.nexus)
    return GOOD


def _persistent_reserve_in(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    return _cut(ctx.reservations.persistent_in(cdb, ctx.nexus), _u16_at7(cdb, disk))


def _persistent_reserve_out(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    ctx.reservations.persistent_out(cdb, ctx.nexus, ctx.data_out)
    return GOOD


def _u32_at5(cdb: bytes, disk: Disk) -> int:
    return int(_U32.unpack_from(cdb, 5)[0])


def _report_luns(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    return report_luns(cdb, ctx.luns)


def report_luns(cdb: bytes, luns: Sequence[int]) -> Reply:
    """REPORT LUNS for `luns`; also what a target answers on a LUN that does not exist."""
    select = cdb[2]
    if select not in (0x00, 0x01, 0x02):
        return Reply.error(invalid_field_in_cdb(2, 7))
    allocation = int(_U32.unpack_from(cdb, 6)[0])
    if allocation < 16:
        return Reply.error(invalid_field_in_cdb(6, 7))
    listed = [] if select == 0x01 else sorted(luns)  # 01h: well-known LUs only; none
    body = b"".join(lun_to_u64(lun).to_bytes(8, "big") for lun in listed)
    return _cut(struct.pack(">II", len(body), 0) + body, allocation)


def _read_defect_data(twelve: bool) -> _Run:
    """An empty defect list in the requested format: a file has no bad sectors to list."""

    def run(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
        if twelve:
            flags = cdb[1] & 0x1F
            return _cut(struct.pack(">BBHI", 0, flags, 0, 0), _u32_at6(cdb, disk))
        flags = cdb[2] & 0x1F
        return _cut(struct.pack(">BBH", 0, flags, 0), _u16_at7(cdb, disk))

    return run


def _report_supported_opcodes(cdb: bytes, disk: Disk, ctx: _Context) -> Outcome:
    rctd, option = bool(cdb[2] & 0x80), cdb[2] & 0x07
    opcode, sa = cdb[3], int(_U16.unpack_from(cdb, 4)[0])
    allocation = _u32_at6(cdb, disk)
    if option == rsoc.ALL_COMMANDS:
        entries = [(op, s, cmd.length) for (op, s), cmd in sorted(_listed(disk).items())]
        return _cut(rsoc.all_commands(entries, rctd), allocation)
    has_sa = opcode in _SA_OPCODES
    if option == rsoc.ONE_COMMAND and has_sa:
        raise invalid_field_in_cdb(2, 2)
    if option == rsoc.ONE_COMMAND_WITH_SA and not has_sa:
        raise invalid_field_in_cdb(2, 2)
    if option not in (rsoc.ONE_COMMAND, rsoc.ONE_COMMAND_WITH_SA, rsoc.ONE_COMMAND_EITHER):
        raise invalid_field_in_cdb(2, 2)
    cmd = _listed(disk).get((opcode, sa if has_sa else None))
    return _cut(rsoc.one_command(cmd.usage if cmd else None, rctd), allocation)


def _listed(disk: Disk) -> dict[tuple[int, int | None], _Command]:
    return {key: cmd for key, cmd in _ALL.items() if cmd.offered(disk)}


def _usage(*values: int) -> bytes:
    return bytes(values)


_FF4 = (0xFF,) * 4
_FF8 = (0xFF,) * 8
_R = 0xF8  # RDPROTECT, DPO, FUA
_W = 0xFA  # WRPROTECT, DPO, FUA, FUA_NV
_V = 0xF6  # VRPROTECT/WRPROTECT, DPO, BYTCHK
_C = 0x04  # control byte: NACA is examined (and refused)


def _rw_table() -> dict[int, _Command]:
    f6, f10, f12, f16 = _fields6, _fields10, _fields12, _fields16
    u6 = _usage(0, 0x1F, 0xFF, 0xFF, 0xFF, _C)

    def u10(op: int, b1: int) -> bytes:
        return _usage(op, b1, *_FF4, 0x1F, 0xFF, 0xFF, _C)

    def u12(op: int, b1: int) -> bytes:
        return _usage(op, b1, *_FF4, *_FF4, 0x1F, _C)

    def u16(op: int, b1: int) -> bytes:
        return _usage(op, b1, *_FF8, *_FF4, 0x1F, _C)

    Op = Opcode
    return {
        Op.READ_6: _Command(6, bytes((Op.READ_6,)) + u6[1:], _reader(f6, 6), _blocks(f6)),
        Op.WRITE_6: _Command(6, bytes((Op.WRITE_6,)) + u6[1:], _writer(f6, 6),
                            data_out=_blocks(f6)),
        Op.READ_10: _Command(10, u10(Op.READ_10, _R), _reader(f10, 10), _blocks(f10)),
        Op.READ_12: _Command(12, u12(Op.READ_12, _R), _reader(f12, 12), _blocks(f12)),
        Op.READ_16: _Command(16, u16(Op.READ_16, _R), _reader(f16, 16), _blocks(f16)),
        Op.WRITE_10: _Command(10, u10(Op.WRITE_10, _W), _writer(f10, 10), data_out=_blocks(f10)),
        Op.WRITE_12: _Command(12, u12(Op.WRITE_12, _W), _writer(f12, 12), data_out=_blocks(f12)),
        Op.WRITE_16: _Command(16, u16(Op.WRITE_16, _W), _writer(f16, 16), data_out=_blocks(f16)),
        Op.WRITE_AND_VERIFY_10: _Command(10, u10(Op.WRITE_AND_VERIFY_10, _V),
                                        _writer(f10, 10, verify=True), data_out=_blocks(f10)),
        Op.WRITE_AND_VERIFY_12: _Command(12, u12(Op.WRITE_AND_VERIFY_12, _V),
                                        _writer(f12, 12, verify=True), data_out=_blocks(f12)),
        Op.WRITE_AND_VERIFY_16: _Command(16, u16(Op.WRITE_AND_VERIFY_16, _V),
                                        _writer(f16, 16, verify=True), data_out=_blocks(f16)),
        Op.VERIFY_10: _Command(10, u10(Op.VERIFY_10, _V), _verifier(f10, 10),
                              data_out=_verify_out(f10)),
        Op.VERIFY_12: _Command(12, u12(Op.VERIFY_12, _V), _verifier(f12, 12),
                              data_out=_verify_out(f12)),
        Op.VERIFY_16: _Command(16, u16(Op.VERIFY_16, _V), _verifier(f16, 16),
                              data_out=_verify_out(f16)),
        Op.SYNCHRONIZE_CACHE_10: _Command(10, u10(Op.SYNCHRONIZE_CACHE_10, 0x02), _syncer(f10)),
        Op.SYNCHRONIZE_CACHE_16: _Command(16, u16(Op.SYNCHRONIZE_CACHE_16, 0x02), _syncer(f16)),
        Op.PRE_FETCH_10: _Command(10, u10(Op.PRE_FETCH_10, 0x02), _prefetcher(f10)),
        Op.PRE_FETCH_16: _Command(16, u16(Op.PRE_FETCH_16, 0x02), _prefetcher(f16)),
        Op.WRITE_SAME_10: _Command(10, u10(Op.WRITE_SAME_10, 0xE8), _write_same(f10, False),
                                  data_out=_write_same_out(f10)),
        Op.WRITE_SAME_16: _Command(16, u16(Op.WRITE_SAME_16, 0xE9), _write_same(f16, True),
                                  data_out=_write_same_out(f16)),
        Op.ORWRITE_16: _Command(16, u16(Op.ORWRITE_16, _W), _orwrite, data_out=_blocks(f16)),
        Op.WRITE_ATOMIC_16: _Command(
            16, _usage(Op.WRITE_ATOMIC_16, 0xF8, *_FF8, 0, 0, 0xFF, 0xFF, 0x1F, _C),
            _write_atomic, data_out=_write_atomic_out, atomic_only=True),
        Op.COMPARE_AND_WRITE: _Command(
            16, _usage(Op.COMPARE_AND_WRITE, _W, *_FF8, 0, 0, 0, 0xFF, 0x1F, _C),
            _compare_and_write, data_out=_compare_and_write_out),
    }


def _other_table() -> dict[int, _Command]:
    Op = Opcode
    return {
        Op.TEST_UNIT_READY: _Command(6, _usage(Op.TEST_UNIT_READY, 0, 0, 0, 0, _C),
                                    _test_unit_ready),
        Op.REQUEST_SENSE: _Command(6, _usage(Op.REQUEST_SENSE, 0x01, 0, 0, 0xFF, _C),
                                  _request_sense, _byte4, medium=False),
        Op.INQUIRY: _Command(6, _usage(Op.INQUIRY, 0x01, 0xFF, 0xFF, 0xFF, _C), _inquiry,
                            _u16_at3, medium=False),
        Op.MODE_SENSE_6: _Command(6, _usage(Op.MODE_SENSE_6, 0x08, 0xFF, 0xFF, 0xFF, _C),
                                 _mode_sense(False), _byte4),
        Op.MODE_SENSE_10: _Command(10, _usage(Op.MODE_SENSE_10, 0x18, 0xFF, 0xFF, 0, 0, 0,
                                             0xFF, 0xFF, _C), _mode_sense(True), _u16_at7),
        Op.MODE_SELECT_6: _Command(6, _usage(Op.MODE_SELECT_6, 0x11, 0, 0, 0xFF, _C),
                                  _mode_select(False), data_out=_byte4),
        Op.MODE_SELECT_10: _Command(10, _usage(Op.MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, 0xFF,
                                              0xFF, _C), _mode_select(True), data_out=_u16_at7),
        Op.START_STOP_UNIT: _Command(6, _usage(Op.START_STOP_UNIT, 0x01, 0, 0x0F, 0xF7, _C),
                                    _start_stop_unit, medium=False),
        Op.PREVENT_ALLOW_MEDIUM_REMOVAL: _Command(
            6, _usage(Op.PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0x03, _C), _prevent_allow,
            medium=False, removable_only=True),
        Op.READ_CAPACITY_10: _Command(10, _usage(Op.READ_CAPACITY_10, 0, *_FF4, 0, 0, 0x01, _C),
                                     _read_capacity_10, lambda cdb, disk: 8),
        Op.READ_DEFECT_DATA_10: _Command(10, _usage(Op.READ_DEFECT_DATA_10, 0, 0x1F, 0, 0, 0, 0,
                                                   0xFF, 0xFF, _C),
                                        _read_defect_data(False), _u16_at7),
        Op.READ_DEFECT_DATA_12: _Command(12, _usage(Op.READ_DEFECT_DATA_12, 0x1F, 0, 0, 0, 0,
                                                   *_FF4, 0, _C),
                                        _read_defect_data(True), _u32_at6),
        Op.UNMAP: _Command(10, _usage(Op.UNMAP, 0, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, _C), _unmap,
                          data_out=_unmap_out, thin_only=True),
        Op.RESERVE_6: _Command(6, _usage(Op.RESERVE_6, 0, 0, 0, 0, _C), _reserve_6),
        Op.RELEASE_6: _Command(6, _usage(Op.RELEASE_6, 0, 0, 0, 0, _C), _release_6),
        Op.REPORT_LUNS: _Command(12, _usage(Op.REPORT_LUNS, 0, 0xFF, 0, 0, 0, *_FF4, 0, _C),
                                _report_luns, _u32_at6, medium=False),
    }


#: The sanitize actions that leave every block deallocated: only on a thin unit.
_DEALLOCATING = (SanitizeAction.BLOCK_ERASE, SanitizeAction.CRYPTO_ERASE)


def _sa_table() -> dict[tuple[int, int], _Command]:
    Op, SA = Opcode, ServiceAction
    return {
        (Op.SERVICE_ACTION_IN_16, SA.READ_CAPACITY_16): _Command(
            16, _usage(Op.SERVICE_ACTION_IN_16, SA.READ_CAPACITY_16, *_FF8, *_FF4, 0, _C),
            _read_capacity_16, _u32_at10),
        (Op.SERVICE_ACTION_IN_16, SA.GET_LBA_STATUS): _Command(
            16, _usage(Op.SERVICE_ACTION_IN_16, SA.GET_LBA_STATUS, *_FF8, *_FF4, 0, _C),
            _get_lba_status, lambda cdb, disk: min(_u32_at10(cdb, disk), LBA_STATUS_BYTES)),
        (Op.MAINTENANCE_IN, SA.REPORT_SUPPORTED_OPERATION_CODES): _Command(
            12, _usage(Op.MAINTENANCE_IN, SA.REPORT_SUPPORTED_OPERATION_CODES, 0x87, 0xFF,
                       0xFF, 0xFF, *_FF4, 0, _C),
            _report_supported_opcodes, _u32_at6, medium=False),
        (Op.EXTENDED_COPY, SA.EXTENDED_COPY_LID1): _Command(
            16, _usage(Op.EXTENDED_COPY, SA.EXTENDED_COPY_LID1, 0, 0, 0, 0, 0, 0, 0, 0,
                       *_FF4, 0, _C),
            _extended_copy, data_out=_extended_copy_out),
        **{(Op.SANITIZE, sa): _Command(
            10, _usage(Op.SANITIZE, 0xA0 | sa, 0, 0, 0, 0, 0, 0xFF, 0xFF, _C), _sanitize,
            data_out=_sanitize_out, thin_only=sa in _DEALLOCATING) for sa in SanitizeAction},
        **{(Op.RECEIVE_COPY_RESULTS, sa): _Command(
            16, _usage(Op.RECEIVE_COPY_RESULTS, sa, 0xFF if sa == CopySa.COPY_STATUS else 0,
                       0, 0, 0, 0, 0, 0, 0, *_FF4, 0, _C),
            _receive_copy_results, _u32_at10) for sa in CopySa},
        **{(Op.PERSISTENT_RESERVE_IN, sa): _Command(
            10, _usage(Op.PERSISTENT_RESERVE_IN, sa, 0, 0, 0, 0, 0, 0xFF, 0xFF, _C),
            _persistent_reserve_in, _u16_at7) for sa in PrinAction},
        **{(Op.PERSISTENT_RESERVE_OUT, sa): _Command(
            10, _usage(Op.PERSISTENT_RESERVE_OUT, sa, 0xFF, 0, 0, *_FF4, _C),
            _persistent_reserve_out, data_out=_u32_at5) for sa in ProutAction},
    }


_BY_OPCODE: dict[int, _Command] = {**_rw_table(), **_other_table()}
_BY_SA: dict[tuple[int, int], _Command] = _sa_table()
_SA_OPCODES = frozenset(op for op, _ in _BY_SA)
_ALL: dict[tuple[int, int | None], _Command] = {
    **{(op, None): cmd for op, cmd in _BY_OPCODE.items()},
    **{(op, sa): cmd for (op, sa), cmd in _BY_SA.items()},
}


def _refusal(cmd: _Command | None, disk: Disk, absent: ScsiError) -> ScsiError:
    """Why a command the unit has cannot run now (its medium is busy or out), or
    `absent`: it is not offered."""
    if cmd is not None and cmd.offered(disk):
        return sanitize_in_progress() if disk.sanitizing else medium_not_present()
    return absent


def _lookup(cdb: bytes, disk: Disk) -> _Command:
    """The command for this CDB, or the sense saying why there is none."""
    if not cdb:
        raise invalid_opcode()
    opcode = cdb[0]
    if opcode in _SA_OPCODES:
        if len(cdb) < 2:
            raise invalid_field_in_cdb(1, 4)
        sa_cmd = _BY_SA.get((opcode, cdb[1] & 0x1F))
        if sa_cmd is None or sa_cmd.needs & disk.lacks:
            # field pointer 1: libiscsi reads this as "service action not implemented"
            raise _refusal(sa_cmd, disk, invalid_field_in_cdb(1, 4))
        cmd = sa_cmd
    else:
        found = _BY_OPCODE.get(opcode)
        if found is None or found.needs & disk.lacks:
            raise _refusal(found, disk, invalid_opcode())
        cmd = found
    if len(cdb) < cmd.length:
        raise invalid_field_in_cdb(len(cdb) - 1)
    if cdb[cmd.length - 1] & _NACA:
        raise invalid_field_in_cdb(cmd.length - 1, 2)
    return cmd


def execute(
    cdb: bytes,
    disk: Disk,
    *,
    luns: Sequence[int] = (0,),
    data_out: bytes | memoryview = b"",
    edtl: int | None = None,
    nexus: Nexus = ANONYMOUS,
    reservations: Reservations | None = None,
    peers: Mapping[int, Disk] | None = None,
    copies: CopyManager | None = None,
) -> Outcome:
    """Decide what one CDB does on `disk`: a finished Reply, or a plan to execute.

    `luns` is what REPORT LUNS lists. `data_out` is the Data-Out buffer received so
    far; only commands whose Data-Out is a parameter list (UNMAP, EXTENDED COPY) look at it.
    `edtl`, the transport's expected data transfer length, is checked only by the
    commands whose Data-Out size is fixed by the CDB (WRITE SAME, COMPARE AND WRITE);
    for the others a difference is the transport's residual, not an error.
    `reservations` is the unit's reservation state and `nexus` who sends the CDB:
    a command another nexus has fenced off ends in RESERVATION CONFLICT. Without
    `reservations` (a caller that keeps none) every call sees an unreserved unit.
    `peers` are the logical units EXTENDED COPY may name, by LUN (none when not
    given), and `copies` the unit's copy manager state (a fresh one when not given).
    Every error comes back as a CHECK CONDITION Reply; nothing is raised.
    """
    try:
        cmd = _lookup(cdb, disk)
        if reservations is None:
            reservations = Reservations()
        elif reservations.legacy is not None or reservations.pr_type is not None:
            # An unreserved unit (the usual case) fences nothing: no call to find that out.
            reservations.check(cdb, nexus)
        context = _BLIND_CONTEXT if cmd.blind else _Context(
            luns, data_out, edtl, nexus, reservations, peers or {},
            copies if copies is not None else CopyManager())
        return cmd.run(cdb, disk, context)
    except ScsiError as exc:
        return Reply.error(exc)
    except ReservationConflict:
        return RESERVATION_CONFLICT


#: What a fenced-off command gets: the status says it all, there is no sense data.
RESERVATION_CONFLICT = Reply(b"", ScsiStatus.RESERVATION_CONFLICT)

#: Opcodes whose Data-Out is a parameter list that decides what the command does:
#: the target executes them only once all of it has arrived.
PARAMETER_LISTS = frozenset((Opcode.UNMAP, Opcode.PERSISTENT_RESERVE_OUT, Opcode.EXTENDED_COPY,
                             Opcode.SANITIZE, Opcode.MODE_SELECT_6, Opcode.MODE_SELECT_10))


def execute_without_lun(cdb: bytes, luns: Sequence[int]) -> Reply:
    """What a target answers on a LUN it does not have (SPC-4 4.6.4): INQUIRY says
    "no device here" (qualifier 011b, type 1Fh), REPORT LUNS lists the LUNs there
    are, REQUEST SENSE and everything else say LOGICAL UNIT NOT SUPPORTED."""
    opcode = cdb[0] if cdb else -1
    if opcode == Opcode.REPORT_LUNS and len(cdb) >= 12:
        return report_luns(cdb, luns)
    if opcode == Opcode.INQUIRY and len(cdb) >= 6:
        data = bytes((0x7F, 0, 0x06, 0x12, 31)) + bytes(31)
        return _cut(data, int(_U16.unpack_from(cdb, 3)[0]))
    error = logical_unit_not_supported()
    if opcode == Opcode.REQUEST_SENSE and len(cdb) >= 6:
        return _cut(build_fixed_sense(error.key, error.code), cdb[4])
    return Reply(b"", ScsiStatus.CHECK_CONDITION, error.sense())


def _length(cdb: bytes, disk: Disk, which: str) -> int:
    try:
        cmd = _lookup(cdb, disk)
        fn: _Length = cmd.data_in if which == "in" else cmd.data_out
        return fn(cdb, disk)
    except (ScsiError, struct.error):
        return 0


def data_in_length(cdb: bytes, disk: Disk) -> int:
    """Bytes of Data-In this CDB asks for (transfer length or allocation length).

    Never raises: a CDB that `execute` will refuse moves 0 bytes.
    """
    return _length(cdb, disk, "in")


def data_out_length(cdb: bytes, disk: Disk) -> int:
    """Bytes of Data-Out this CDB says will come. Never raises, like data_in_length."""
    return _length(cdb, disk, "out")
