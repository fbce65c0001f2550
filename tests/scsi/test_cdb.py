"""Initiator-side builders and reply parsers, checked against the target's own replies."""

import pytest

from earmark.scsi import cdb
from earmark.scsi.disk import Disk
from earmark.scsi.lun import lun_from_u64, lun_to_u64
from earmark.scsi.plans import ReadPlan, Reply, SyncPlan, UnmapPlan, WritePlan, WriteSamePlan
from earmark.scsi.sbc import execute

DISK = Disk(num_blocks=1 << 21, serial="SN0001")


def reply(cdb_bytes: bytes, **kw: object) -> bytes:
    out = execute(cdb_bytes, DISK, **kw)  # type: ignore[arg-type]
    assert isinstance(out, Reply) and out.status == 0, out
    return out.data


def test_read_write_builders_encode_fields() -> None:
    assert cdb.read_10(0x01020304, 9) == bytes.fromhex("28 00 01020304 00 0009 00")
    assert cdb.write_16(1 << 40, 3, fua=True)[:2] == b"\x8a\x08"
    assert execute(cdb.read_16(100, 8), DISK) == ReadPlan(100, 8)
    assert execute(cdb.write_10(5, 1, fua=True), DISK) == WritePlan(5, 1, True)
    assert execute(cdb.write_same_16(0, 4, unmap=True), DISK) == WriteSamePlan(0, 4, True)


def test_standard_inquiry_parses() -> None:
    inq = cdb.parse_standard_inquiry(reply(cdb.inquiry()))
    assert (inq.vendor, inq.product, inq.revision) == ("EARMARK", "EARMARK DISK", "0001")
    assert inq.version == 6 and inq.response_data_format == 2 and inq.qualifier == 0
    assert 0x04C0 in inq.version_descriptors  # SBC-3


def test_capacity_parses_both_forms() -> None:
    c10 = cdb.parse_read_capacity_10(reply(cdb.read_capacity_10()))
    c16 = cdb.parse_read_capacity_16(reply(cdb.read_capacity_16()))
    assert c10 == cdb.Capacity(DISK.num_blocks, 512)
    assert (c16.num_blocks, c16.lbpme, c16.lbprz) == (DISK.num_blocks, True, True)


def test_report_luns_round_trip_with_flat_space() -> None:
    data = reply(cdb.report_luns(), luns=[0, 7, 300])
    assert cdb.parse_report_luns(data) == [0, 7, 300]
    assert data[8 * 3:8 * 3 + 2] == b"\x41\x2c"  # flat space for LUN 300


def test_lun_decoding_keeps_unknown_methods_distinct() -> None:
    assert lun_from_u64(0x0001_0000_0000_0000) == 1
    odd = 0x8000_0000_0000_0001
    assert lun_from_u64(odd) == -1 - odd
    assert lun_to_u64(lun_from_u64(odd)) == odd
    with pytest.raises(ValueError):
        lun_to_u64(1 << 14)


def test_device_identification_designators() -> None:
    page = reply(cdb.inquiry(255, cdb.VpdPage.DEVICE_IDENTIFICATION))
    naa, t10 = cdb.parse_device_identification(page)
    assert naa.designator_type == 3 and naa.code_set == 1 and naa.value == DISK.naa
    assert naa.value[0] >> 4 == 3  # locally assigned
    assert t10.designator_type == 1 and t10.value.startswith(b"EARMARK ")
    assert t10.value.endswith(b"SN0001")


def test_supported_pages_parse() -> None:
    pages = cdb.parse_supported_vpd_pages(reply(cdb.inquiry(255, 0)))
    assert pages == [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]


def test_unmap_parameter_list_goes_through_the_target() -> None:
    params = cdb.unmap_parameter_list([(10, 2), (100, 0), (200, 8)])
    out = execute(cdb.unmap(len(params)), DISK, data_out=params)
    assert isinstance(out, UnmapPlan)
    assert [(e.lba, e.nblocks) for e in out.extents] == [(10, 2), (200, 8)]


def test_mode_sense_builders_are_understood() -> None:
    six = reply(cdb.mode_sense_6(0x3F))
    ten = reply(cdb.mode_sense_10(0x08, llbaa=True))
    assert six[0] == len(six) - 1 and six[3] == 8
    assert int.from_bytes(ten[:2], "big") == len(ten) - 2 and ten[7] == 16


def test_sync_cache_builders() -> None:
    assert execute(cdb.synchronize_cache_10(), DISK) == SyncPlan()
    assert execute(cdb.synchronize_cache_16(DISK.num_blocks - 1, 1), DISK) == SyncPlan()
    beyond = execute(cdb.synchronize_cache_16(DISK.num_blocks, 1), DISK)
    assert isinstance(beyond, Reply) and beyond.sense[12] == 0x21


@pytest.mark.parametrize(
    ("parser", "data"),
    [
        (cdb.parse_standard_inquiry, bytes(35)),
        (cdb.parse_read_capacity_10, bytes(7)),
        (cdb.parse_read_capacity_16, bytes(15)),
        (cdb.parse_report_luns, bytes(7)),
        (cdb.parse_device_identification, bytes((0, 0x80, 0, 0))),
        (cdb.parse_device_identification, bytes((0, 0x83, 0, 8, 1, 3, 0, 9, 0, 0, 0, 0))),
        (cdb.parse_supported_vpd_pages, bytes((0, 0x83, 0, 0))),
    ],
)
def test_short_replies_are_malformed(parser: object, data: bytes) -> None:
    with pytest.raises(cdb.MalformedReply):
        parser(data)  # type: ignore[operator]
