"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS, sans-I/O, as libiscsi's
ExtendedCopy and ReceiveCopyResults suites check them."""

import struct

from earmark.scsi import inquiry
from earmark.scsi.disk import Disk
from earmark.scsi.plans import GOOD, CopyPlan, CopySegment, Reply
from earmark.scsi.reservations import Nexus
from earmark.scsi.sbc import PARAMETER_LISTS, data_in_length, data_out_length, execute
from earmark.scsi.sense import ScsiStatus, SenseKey, parse_sense
from earmark.scsi.xcopy import (
    MAX_CSCD_DESCRIPTORS,
    MAX_DESCRIPTOR_LIST,
    MAX_PARAMETER_LIST,
    MAX_SEGMENT_DESCRIPTORS,
    CopyManager,
)

N = 8192
DISK = Disk(num_blocks=N, serial="X1")
OTHER = Disk(num_blocks=N, serial="X2", block_size=4096)
RO = Disk(num_blocks=N, serial="X3", read_only=True)
PEERS = {0: DISK, 1: OTHER, 2: RO}
ILLEGAL = SenseKey.ILLEGAL_REQUEST
ABORTED = SenseKey.COPY_ABORTED
LENGTH_ERROR = (ILLEGAL, 0x1A00)
ME = Nexus("iqn.me", 1)


def xcopy_cdb(length: int) -> bytes:
    return struct.pack(">BB8sIBB", 0x83, 0, bytes(8), length, 0, 0)


def rcr_cdb(sa: int, list_id: int = 0, allocation: int = 1024) -> bytes:
    return struct.pack(">BBB7sIBB", 0x84, sa, list_id, bytes(7), allocation, 0, 0)


def cscd(disk: Disk, *, kind: int = 0xE4, device_type: int = 0, block: int | None = None) -> bytes:
    naa = inquiry.lu_designators(disk)[0]  # what libiscsi picks: the NAA designator
    size = disk.block_size if block is None else block
    return (bytes((kind, device_type, 0, 0)) + naa.ljust(20, b"\0") + bytes(5)
            + size.to_bytes(3, "big"))


def b2b(src: int, dst: int, n: int, src_lba: int, dst_lba: int, *, dc: bool = False) -> bytes:
    return struct.pack(">BBHHHHHQQ", 0x02, 0x02 if dc else 0, 0x18, src, dst, 0, n,
                       src_lba, dst_lba)


def params(cscds: list[bytes], segments: list[bytes], *, list_id: int = 1,
           usage: int = 0, inline: int = 0) -> bytes:
    c, s = b"".join(cscds), b"".join(segments)
    return struct.pack(">BBHIII", list_id, usage << 3, len(c), 0, len(s), inline) + c + s


def xcopy(data: bytes, *, length: int | None = None, copies: CopyManager | None = None,
          nexus: Nexus = ME) -> object:
    n = len(data) if length is None else length
    return execute(xcopy_cdb(n), DISK, data_out=data, peers=PEERS, copies=copies, nexus=nexus)


def sense_of(out: object) -> tuple[int, int]:
    assert isinstance(out, Reply) and out.status == ScsiStatus.CHECK_CONDITION, out
    s = parse_sense(out.sense)
    return s.key, s.code


def data_of(out: object) -> bytes:
    assert isinstance(out, Reply) and out.status == ScsiStatus.GOOD, out
    return out.data


def test_block_to_block_copy_resolves_the_naa_designator_to_a_lun() -> None:
    plan = xcopy(params([cscd(DISK), cscd(OTHER)], [b2b(0, 1, 16, 0, 100),
                                                    b2b(1, 0, 16, 7, 50, dc=True)]))
    assert plan == CopyPlan(1, True, (CopySegment(0, 0, 1, 100, 16 * 512),
                                      CopySegment(1, 7, 0, 50, 16 * 512)))


def test_xcopy_is_a_parameter_list_command_capped_at_the_longest_valid_list() -> None:
    assert 0x83 in PARAMETER_LISTS
    assert data_out_length(xcopy_cdb(92), DISK) == 92
    assert data_out_length(xcopy_cdb(1 << 30), DISK) == MAX_PARAMETER_LIST + 1
    assert data_in_length(rcr_cdb(3, allocation=1024), DISK) == 1024


def test_parameter_list_lengths() -> None:
    whole = params([cscd(DISK)], [b2b(0, 0, 8, 0, 100)])
    assert xcopy(b"", length=0) == GOOD
    assert sense_of(xcopy(whole[:47])) == LENGTH_ERROR  # cuts the CSCD descriptor
    assert sense_of(xcopy(whole[:-1])) == LENGTH_ERROR  # cuts the segment descriptor
    assert sense_of(xcopy(whole[:10])) == LENGTH_ERROR  # not even a header
    assert sense_of(xcopy(whole, length=MAX_PARAMETER_LIST + 1)) == LENGTH_ERROR


def test_descriptor_limits_and_the_list_length_limit() -> None:
    many_cscds = [cscd(DISK)] * (MAX_CSCD_DESCRIPTORS + 1)
    assert sense_of(xcopy(params(many_cscds, [b2b(0, 0, 8, 0, 100)]))) == (ILLEGAL, 0x2606)
    many_segments = [b2b(0, 0, 8, 0, 100)] * (MAX_SEGMENT_DESCRIPTORS + 1)
    assert sense_of(xcopy(params([cscd(DISK)], many_segments))) == (ILLEGAL, 0x2608)
    # Past MAXIMUM DESCRIPTOR LIST LENGTH the length is the error, whatever the counts.
    over = params(many_cscds, many_segments)
    assert len(over) - 16 > MAX_DESCRIPTOR_LIST
    assert sense_of(xcopy(over, length=len(over) - 1)) == LENGTH_ERROR


def test_unsupported_descriptor_types() -> None:
    fc = cscd(DISK, kind=0xE0)  # Fibre Channel N_Port_Name CSCD
    assert sense_of(xcopy(params([fc], [b2b(0, 0, 8, 0, 100)]))) == (ILLEGAL, 0x2607)
    stream = struct.pack(">BBHHH12s", 0x03, 0, 0x10, 0, 0, bytes(12))  # stream-to-stream
    assert sense_of(xcopy(params([cscd(DISK)], [stream]))) == (ILLEGAL, 0x2609)


def test_header_fields() -> None:
    seg = [b2b(0, 0, 8, 0, 100)]
    assert sense_of(xcopy(params([cscd(DISK)], seg, usage=1))) == (ILLEGAL, 0x2600)
    assert sense_of(xcopy(params([cscd(DISK)], seg, usage=3, list_id=5))) == (ILLEGAL, 0x2600)
    plan = xcopy(params([cscd(DISK)], seg, usage=3, list_id=0))
    assert isinstance(plan, CopyPlan) and plan.list_id is None
    assert sense_of(xcopy(params([cscd(DISK)], seg, inline=4) + bytes(4))) == (ILLEGAL, 0x2600)


def test_lu_id_type_is_ignored_as_spc4_says() -> None:
    reserved_lu_id = bytearray(cscd(DISK))
    reserved_lu_id[1] = 0x02 << 6
    assert isinstance(xcopy(params([bytes(reserved_lu_id)], [b2b(0, 0, 8, 0, 100)])), CopyPlan)


def test_segments_that_cannot_be_copied_abort_the_copy() -> None:
    one = [cscd(DISK)]
    assert sense_of(xcopy(params(one, [b2b(0, 1, 8, 0, 100)]))) == (ABORTED, 0x0D02)  # index
    stranger = Disk(num_blocks=N, serial="not-here")
    assert sense_of(xcopy(params([cscd(stranger)], [b2b(0, 0, 8, 0, 9)]))) == (ABORTED, 0x0D02)
    assert sense_of(xcopy(params(one, [b2b(0, 0, 2048, 0, N - 1)]))) == (ABORTED, 0x0000)
    assert sense_of(xcopy(params(one, [b2b(0, 0, 2, N - 1, 0)]))) == (ABORTED, 0x0000)
    wrong_type = [cscd(DISK, device_type=1)]
    assert sense_of(xcopy(params(wrong_type, [b2b(0, 0, 8, 0, 9)]))) == (ABORTED, 0x0D03)
    wrong_size = [cscd(DISK, block=4096)]
    assert sense_of(xcopy(params(wrong_size, [b2b(0, 0, 8, 0, 9)]))) == (ABORTED, 0x0D03)
    to_ro = [cscd(DISK), cscd(RO)]
    assert sense_of(xcopy(params(to_ro, [b2b(0, 1, 8, 0, 9)]))) == (ABORTED, 0x2700)
    # 3 source blocks of 512 bytes are not whole 4096-byte destination blocks.
    mixed = [cscd(DISK), cscd(OTHER)]
    assert sense_of(xcopy(params(mixed, [b2b(0, 1, 3, 0, 9)]))) == (ILLEGAL, 0x2600)


def test_operating_parameters_report_the_enforced_limits() -> None:
    data = data_of(execute(rcr_cdb(3), DISK))
    length, snlid = struct.unpack_from(">IB", data)
    assert length == len(data) - 4 and length >= 40 and snlid & 1
    max_cscd, max_seg, max_list, max_segment = struct.unpack_from(">HHII", data, 8)
    assert (max_cscd, max_seg, max_list) == (MAX_CSCD_DESCRIPTORS, MAX_SEGMENT_DESCRIPTORS,
                                             MAX_DESCRIPTOR_LIST)
    assert max_segment == 0xFFFF * 512
    assert data[44 : 44 + data[43]] == bytes((0x02, 0xE4))
    assert data_of(execute(rcr_cdb(3, allocation=8), DISK)) == data[:8]


def test_copy_status_follows_the_list_identifier_per_nexus() -> None:
    copies = CopyManager()
    status = rcr_cdb(0, list_id=1)
    assert sense_of(execute(status, DISK, copies=copies, nexus=ME)) == (ILLEGAL, 0x2400)
    plan = xcopy(params([cscd(DISK)], [b2b(0, 0, 8, 0, 100)]), copies=copies)
    assert isinstance(plan, CopyPlan)
    running = data_of(execute(status, DISK, copies=copies, nexus=ME))
    assert running[4] == 0x10  # operation in progress
    busy = xcopy(params([cscd(DISK)], [b2b(0, 0, 8, 0, 100)]), copies=copies)
    assert sense_of(busy) == (ILLEGAL, 0x0016)  # OPERATION IN PROGRESS
    other = Nexus("iqn.other", 1)  # list identifiers belong to the nexus
    assert sense_of(execute(status, DISK, copies=copies, nexus=other)) == (ILLEGAL, 0x2400)
    copies.finish(ME, plan, ok=True)
    done = data_of(execute(status, DISK, copies=copies, nexus=ME))
    assert struct.unpack(">IBHBI", done) == (8, 0x00, 1, 0, 8 * 512)
    copies.nexus_lost(ME)
    assert sense_of(execute(status, DISK, copies=copies, nexus=ME)) == (ILLEGAL, 0x2400)


def test_failed_copies_and_lists_that_are_not_held() -> None:
    copies = CopyManager()
    plan = xcopy(params([cscd(DISK)], [b2b(0, 0, 8, 0, 100)], list_id=2), copies=copies)
    assert isinstance(plan, CopyPlan)
    copies.finish(ME, plan, ok=False)
    failed = data_of(execute(rcr_cdb(0, list_id=2), DISK, copies=copies, nexus=ME))
    assert failed[4] == 0x01 and failed[5:7] == b"\0\0"
    no_hold = xcopy(params([cscd(DISK)], [b2b(0, 0, 8, 0, 100)], list_id=3, usage=2),
                    copies=copies)
    assert isinstance(no_hold, CopyPlan)
    copies.finish(ME, no_hold, ok=True)
    assert sense_of(execute(rcr_cdb(0, list_id=3), DISK, copies=copies, nexus=ME))[1] == 0x2400
    # A list with no segments moves nothing and is complete at once.
    assert xcopy(params([cscd(DISK)], [], list_id=4), copies=copies) == GOOD
    empty = data_of(execute(rcr_cdb(0, list_id=4), DISK, copies=copies, nexus=ME))
    assert empty[4] == 0x00


def test_huge_transfer_counts_are_reported_in_larger_units() -> None:
    copies = CopyManager()
    seg = CopySegment(0, 0, 1, 0, 0xFFFF * 4096)
    plan = CopyPlan(9, True, (seg,) * 64)
    copies.begin(ME, plan)
    copies.finish(ME, plan, ok=True)
    data = data_of(execute(rcr_cdb(0, list_id=9), DISK, copies=copies, nexus=ME))
    assert data[7] == 1 and struct.unpack_from(">I", data, 8)[0] == 64 * 0xFFFF * 4


def test_inquiry_and_rsoc_announce_the_copy_manager() -> None:
    std = data_of(execute(bytes((0x12, 0, 0, 0, 96, 0)), DISK))
    assert std[5] & 0x08  # 3PC
    rsoc = data_of(execute(struct.pack(">BBBBHIBB", 0xA3, 0x0C, 0, 0, 0, 4096, 0, 0), DISK))
    listed = {(rsoc[p], struct.unpack_from(">H", rsoc, p + 2)[0])
              for p in range(4, len(rsoc), 8)}
    assert {(0x83, 0), (0x84, 0), (0x84, 3)} <= listed
