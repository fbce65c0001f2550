"""Tests for tools.peers: output parsers on recorded tool output, then the real peers.

The parser tests use text captured from libiscsi-bin 1.19 against tgt 1.0.85,
including the awkward cases (a verdict followed by teardown noise, a
"[FAILED]" message inside a test CUnit passed), so a regression in counting
shows up without starting anything. The peers tests start real tgtd
instances on free loopback ports and drive them with libiscsi's tools.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.targets import tgtd_with
from tools.peers import (
    PeerError,
    Tgtd,
    free_port,
    iscsi_inq,
    iscsi_ls,
    iscsi_perf,
    iscsi_readcapacity16,
    iscsi_test_cu,
    parse_cunit,
    parse_inquiry,
    parse_iscsi_ls,
    parse_perf,
    parse_readcapacity16,
)

LUN_SIZE = 64 << 20
IQN = "iqn.2024-01.org.earmark:test-peers"

# --------------------------------------------------------------------------
# recorded output
# --------------------------------------------------------------------------

CUNIT_RUN = """


     CUnit - A unit testing framework for C - Version 2.1-3
     http://cunit.sourceforge.net/


Suite: CompareAndWrite
  Test: Simple ...    [SKIPPED] COMPAREANDWRITE is not implemented.
    [SKIPPED] COMPAREANDWRITE is not implemented.
passed
Suite: GetLBAStatus
  Test: Simple ...passed
  Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed
FAILED
    1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
Suite: Reserve6
  Test: LUNReset ...passed    [FAILED] PRIN command: failed with sense. UNIT_ATTENTION

Suite: WriteSame10
  Test: UnmapVPD ...    [FAILED] WRITESAME10 command failed with status 2
passed
Suite: iSCSIdatasn
  Test: iSCSIDataSnInvalid ...FAILED
    1. test_iscsi_datasn_invalid.c:98  - CU_ASSERT_NOT_EQUAL(ret,0)
    2. test_iscsi_datasn_invalid.c:116  - CU_ASSERT_NOT_EQUAL(ret,0)

Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      5      5    n/a      0        0
               tests      6      6      4      2        0
             asserts     40     40     37      3      n/a

Elapsed time =    0.012 seconds
Tests completed with return value: 0
"""

PERF_OUT = (
    "iscsi-perf version 0.1 - (c) 2014-2015 by Peter Lieven <pl@\u0138amp.de>\n\n"
    "connected to iscsi://127.0.0.1:44681/iqn.2024-01.test.earmark:t1/1\n"
    "capacity is 131072 blocks or 67108864 byte (64 MB)\n"
    "performing RANDOM READ with 32 parallel requests\n"
    "FIXED transfer size of 8 blocks (4096 byte)\n"
    "will run for 2 seconds.\n\n"
    "\r00:00:01 - lba 35930, iops current 28979 (113 MB/s), iops average 28979 (113 MB/s),"
    " in_flight 32, busy 0        "
    "\riops average 30360 (118 MB/s)                                   \n\nfinished.\n"
)

LS_OUT = """Target:iqn.2024-01.test.earmark:t1 Portal:127.0.0.1:44681,1
Lun:0    Type:STORAGE_ARRAY_CONTROLLER
Lun:1    Type:DIRECT_ACCESS (Size:63M)
Target:iqn.2024-01.test.earmark:t2 Portal:[::1]:3260,7
"""

RC16_OUT = """RETURNED LOGICAL BLOCK ADDRESS:131071
LOGICAL BLOCK LENGTH IN BYTES:512
P_TYPE:0 PROT_EN:0
P_I_EXPONENT:0 LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:3
LBPME:1 LBPRZ:0
LOWEST ALIGNED LOGICAL BLOCK ADDRESS:0
Total size:67108864
"""

INQ_OUT = (
    "Peripheral Qualifier:CONNECTED\n"
    "Peripheral Device Type:DIRECT_ACCESS\n"
    "Removable:0\n"
    "Version:5 ANSI INCITS 408-2005 (SPC-3)\n"
    "Vendor:IET     \n"  # SCSI pads these fields with spaces
    "Product:VIRTUAL-DISK    \n"
    "Revision:0001\n"
    "Version Descriptor:04c0 SBC-3\n"
    "Version Descriptor:0960 iSCSI\n"
)


# --------------------------------------------------------------------------
# parsers (no peers needed)
# --------------------------------------------------------------------------


def test_cunit_counts_skipped_apart_and_trusts_cunit_verdicts() -> None:
    r = parse_cunit(CUNIT_RUN, returncode=1)
    outcome = {name: o.outcome for name, o in r.outcomes.items()}
    assert outcome == {
        "CompareAndWrite.Simple": "skipped",
        "GetLBAStatus.Simple": "passed",
        "GetLBAStatus.BeyondEol": "failed",
        # verdict first, teardown noise after it: CUnit says passed
        "Reserve6.LUNReset": "passed",
        # a "[FAILED]" message is not a verdict
        "WriteSame10.UnmapVPD": "passed",
        "iSCSIdatasn.iSCSIDataSnInvalid": "failed",
    }
    assert (r.passed, r.failed, r.skipped, r.crashed) == (3, 2, 1, False)
    assert (r.cunit_ran, r.cunit_passed, r.cunit_failed) == (6, 4, 2)
    assert r.consistent
    assert r.summary_lines[0].startswith("Run Summary:")
    assert any(line.strip().startswith("tests") for line in r.summary_lines)
    assert "CU_ASSERT_NOT_EQUAL" in r.outcomes["iSCSIdatasn.iSCSIDataSnInvalid"].detail
    assert r.names("skipped") == ["CompareAndWrite.Simple"]


def test_cunit_run_cut_short_is_a_crash_and_blames_the_running_test() -> None:
    cut = CUNIT_RUN[: CUNIT_RUN.index("Suite: Reserve6")] + "Suite: Reserve6\n  Test: LUNReset ..."
    r = parse_cunit(cut, returncode=-11)
    assert r.crashed
    assert r.crash_reason is not None and "SIGSEGV" in r.crash_reason
    assert r.outcomes["Reserve6.LUNReset"].outcome == "crashed"
    assert (r.passed, r.failed, r.skipped) == (1, 1, 1)
    assert r.summary_lines == [] and r.cunit_ran is None


def test_cunit_missing_summary_without_signal_is_still_a_crash() -> None:
    r = parse_cunit("Failed to connect to SCSI device 0\n", returncode=255)
    assert r.crashed and r.outcomes == {}
    assert r.crash_reason is not None and "no CUnit summary" in r.crash_reason
    assert parse_cunit(CUNIT_RUN, returncode=None, timed_out=True).crashed


def test_perf_takes_the_closing_average_not_the_last_progress_line() -> None:
    p = parse_perf(PERF_OUT)
    assert p.iops == 30360 and p.final
    assert p.per_second_iops == [28979]
    assert (p.block_size, p.blocks_per_io, p.transfer_bytes) == (512, 8, 4096)
    assert (p.queue_depth, p.random, p.seconds) == (32, True, 2)
    assert p.reported_mb_per_s == 118
    assert p.mib_per_s == pytest.approx(30360 * 4096 / 2**20)


def test_perf_without_closing_line_falls_back_and_says_so() -> None:
    cut = PERF_OUT[: PERF_OUT.index("\riops average 30360")]
    p = parse_perf(cut)
    assert p.iops == 28979 and not p.final
    with pytest.raises(PeerError, match="no IOPS figure"):
        parse_perf(cut[: cut.index("\r00:00:01")])
    with pytest.raises(PeerError, match="I/O failure"):
        parse_perf(PERF_OUT + "Read10/16 failed with sense key:5 ascq:2100\n")


def test_ls_parses_targets_portals_and_coarse_sizes() -> None:
    t1, t2 = parse_iscsi_ls(LS_OUT)
    assert (t1.iqn, t1.portal, t1.tpgt) == ("iqn.2024-01.test.earmark:t1", "127.0.0.1:44681", 1)
    assert [(lun.lun, lun.device_type) for lun in t1.luns] == [
        (0, "STORAGE_ARRAY_CONTROLLER"),
        (1, "DIRECT_ACCESS"),
    ]
    assert t1.luns[1].size_text == "63M" and t1.luns[1].size_bytes == 63 << 20
    assert t1.luns[0].size_bytes is None
    assert (t2.portal, t2.tpgt, t2.luns) == ("[::1]:3260", 7, [])


def test_readcapacity16_counts_blocks_not_last_lba() -> None:
    cap = parse_readcapacity16(RC16_OUT)
    block_size, num_blocks = cap
    assert (block_size, num_blocks) == (512, 131072)
    assert cap.size_bytes == 64 << 20
    with pytest.raises(PeerError):
        parse_readcapacity16("Login Failed.\n")


def test_inquiry_strips_padding_and_collects_descriptors() -> None:
    inq = parse_inquiry(INQ_OUT)
    assert inq.is_disk and (inq.vendor, inq.product) == ("IET", "VIRTUAL-DISK")
    assert inq.version_descriptors == ["04c0 SBC-3", "0960 iSCSI"]
    assert not parse_inquiry(INQ_OUT.replace("DIRECT_ACCESS", "SEQUENTIAL_ACCESS")).is_disk


def test_urls_carry_credentials_libiscsi_can_parse() -> None:
    t = Tgtd(LUN_SIZE, iqn=IQN, chap=("u", "p" * 12), mutual=("tu", "q" * 12))
    t.port = 4000  # not started: url() only formats
    assert t.url() == f"iscsi://127.0.0.1:4000/{IQN}/1"
    assert t.url(0, "u", "pw") == f"iscsi://u%pw@127.0.0.1:4000/{IQN}/0"
    assert t.auth_url() == (
        f"iscsi://u%{'p' * 12}@127.0.0.1:4000/{IQN}/1?target_user=tu&target_password={'q' * 12}"
    )
    assert t.portal_url() == "iscsi://127.0.0.1:4000"
    with pytest.raises(ValueError, match="libiscsi URL"):
        t.url(user="a@b", password="x")
    with pytest.raises(ValueError, match="mutual"):
        Tgtd(LUN_SIZE, mutual=("a", "b"))
    with pytest.raises(ValueError, match="multiple of 512"):
        Tgtd(1000)


@pytest.mark.tcp
def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


# --------------------------------------------------------------------------
# the real peers
# --------------------------------------------------------------------------


def _tgtd_pids_on(port: int) -> list[int]:
    """tgtd processes whose command line names this portal port."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"tgtd") and f":{port}".encode() in b" ".join(cmdline):
            pids.append(int(entry.name))
    return pids


def _assert_gone(pid: int | None, port: int) -> None:
    assert pid is not None
    assert not Path(f"/proc/{pid}").exists() or _tgtd_pids_on(port) == []
    assert _tgtd_pids_on(port) == []
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 1):
        pass
    with socket.socket() as s:  # nobody listens: a new listener can take it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


# The shared `tgtd` fixture (tests/conftest.py), with this module's LUN and IQN.
WITH_TGTD = tgtd_with(LUN_SIZE, iqn=IQN)


@WITH_TGTD
def test_inq_reports_a_disk(tgtd: Tgtd) -> None:
    inq = iscsi_inq(tgtd.url())
    assert inq.is_disk
    assert inq.vendor == "IET"  # tgtd's vendor id, so it was tgtd that answered
    assert not iscsi_inq(tgtd.url(lun=0)).is_disk  # LUN 0 is tgtd's controller


@WITH_TGTD
def test_readcapacity16_gives_the_size_created(tgtd: Tgtd) -> None:
    block_size, num_blocks = iscsi_readcapacity16(tgtd.url())
    assert block_size == 512
    assert num_blocks * block_size == LUN_SIZE
    # the LUN file is sparse: 64 MiB of address space, almost no disk
    assert os.stat(tgtd.lun_path).st_blocks * 512 < LUN_SIZE // 8


@WITH_TGTD
def test_ls_lists_the_iqn_and_its_lun(tgtd: Tgtd) -> None:
    targets = iscsi_ls(tgtd.portal_url())
    assert [(t.iqn, t.portal) for t in targets] == [(IQN, f"127.0.0.1:{tgtd.port}")]
    (target,) = iscsi_ls(tgtd.portal_url(), show_luns=True)
    lun1 = next(lun for lun in target.luns if lun.lun == 1)
    assert lun1.device_type == "DIRECT_ACCESS"
    assert lun1.size_bytes is not None and LUN_SIZE - (1 << 20) <= lun1.size_bytes <= LUN_SIZE


@WITH_TGTD
def test_perf_short_run_gives_iops(tgtd: Tgtd) -> None:
    r = iscsi_perf(tgtd.url(), blocks=8, queue_depth=8, random=True, seconds=1)
    assert r.iops > 0 and r.final
    assert (r.transfer_bytes, r.queue_depth, r.random) == (4096, 8, True)
    assert r.mib_per_s == pytest.approx(r.iops * 4096 / 2**20)


@WITH_TGTD
def test_conformance_subset_counts_tgtds_skip(tgtd: Tgtd) -> None:
    r = iscsi_test_cu(tgtd.url(), tests="ALL.Inquiry", timeout=60)
    assert not r.crashed, r.crash_reason
    assert r.consistent
    # tgtd's LUN is fully provisioned, so Inquiry.BlockLimits prints [SKIPPED]
    assert r.outcomes["Inquiry.BlockLimits"].outcome == "skipped"
    assert r.passed >= 5 and r.failed == 0
    assert r.passed + r.skipped == r.cunit_passed == len(r.outcomes)


@pytest.mark.peers
def test_conformance_against_nothing_is_a_crash_not_an_exception() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        refused = listener.getsockname()[1]  # bound, never listening: connect is refused
        r = iscsi_test_cu(f"iscsi://127.0.0.1:{refused}/{IQN}/1", timeout=30)
    assert r.crashed and r.outcomes == {} and r.summary_lines == []


@pytest.mark.peers
def test_conformance_timeout_stops_the_tool_and_reports_crash() -> None:
    with socket.socket() as silent:  # accepts the TCP connection, never answers the login
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        # Without the timeout this would hang until pytest's own (120 s) ends the test.
        r = iscsi_test_cu(f"iscsi://127.0.0.1:{silent.getsockname()[1]}/{IQN}/1", timeout=1)
    assert r.crashed and r.crash_reason is not None and "timed out" in r.crash_reason


CHAP, MUTUAL = ("alice", "alice-secret-1"), ("tgtd", "target-secret-1")


@tgtd_with(LUN_SIZE, iqn=IQN, chap=CHAP, mutual=MUTUAL)
def test_chap_right_secret_logs_in_wrong_one_fails(tgtd: Tgtd) -> None:
    assert iscsi_inq(tgtd.auth_url()).is_disk
    with pytest.raises(PeerError, match="Authentication failure"):
        iscsi_inq(tgtd.url(user="alice", password="wrong-secret-1"))
    with pytest.raises(PeerError, match="Authentication failure"):
        iscsi_inq(tgtd.url())  # no credentials at all
    with pytest.raises(PeerError, match="CHAP_R"):  # target proves a different secret
        iscsi_inq(
            tgtd.url(
                user="alice",
                password="alice-secret-1",
                target_user="tgtd",
                target_password="not-the-target",
            )
        )
    with pytest.raises(PeerError):  # a normal login per target with -s: needs the secret
        iscsi_ls(tgtd.portal_url("alice", "wrong-secret-1"), show_luns=True)


@pytest.mark.peers
def test_tgtd_is_gone_after_stop_even_if_the_body_fails(tmp_path: Path) -> None:
    lun = tmp_path / "lun.img"
    lun.write_bytes(b"\0" * (1 << 20))
    t = Tgtd(lun, iqn=IQN)
    with pytest.raises(RuntimeError, match="boom"), t:
        pid, port, workdir = t.pid, t.port, t.workdir
        assert t.running and _tgtd_pids_on(port) == [pid]
        assert iscsi_readcapacity16(t.url()) == (512, 2048)
        raise RuntimeError("boom")
    assert not t.running and t.pid is None
    _assert_gone(pid, port)
    assert not workdir.exists()  # private control socket and log went with it
    assert lun.exists()  # a caller's LUN file is the caller's
    t.stop()  # idempotent


@pytest.mark.peers
def test_instances_run_side_by_side() -> None:
    with Tgtd(1 << 20, iqn=IQN + "-a") as a, Tgtd(2 << 20, iqn=IQN + "-b") as b:
        assert a.port != b.port and a.workdir != b.workdir
        assert [t.iqn for t in iscsi_ls(a.portal_url())] == [IQN + "-a"]
        assert [t.iqn for t in iscsi_ls(b.portal_url())] == [IQN + "-b"]
        assert iscsi_readcapacity16(b.url()).size_bytes == 2 << 20
        b_pid, b_port = b.pid, b.port
        b.stop()  # stopping one leaves the other serving
        _assert_gone(b_pid, b_port)
        assert iscsi_readcapacity16(a.url()).size_bytes == 1 << 20


@pytest.mark.peers
def test_startup_failure_raises_with_tgtds_log_and_leaves_nothing() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        t = Tgtd(LUN_SIZE, iqn=IQN, port=port)
        with pytest.raises(PeerError, match="could not bind") as info:
            t.start()
        assert "Address already in use" in str(info.value)  # tgtd's own words
        assert t.pid is None and _tgtd_pids_on(port) == []


@pytest.mark.peers
@pytest.mark.slow
def test_full_conformance_suite_against_tgtd() -> None:
    with Tgtd(LUN_SIZE, iqn=IQN) as t:
        r = iscsi_test_cu(t.url(), tests="ALL", dataloss=True, timeout=900)
    assert not r.crashed, r.crash_reason
    assert r.consistent, r.summary_lines
    assert r.cunit_ran == len(r.outcomes)
    assert r.passed > 100 and r.skipped > 0
