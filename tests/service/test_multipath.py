"""Two portals (`earmark serve --portal`), one session through each to one LUN: the same
data, and persistent reservations that hold across the paths (each is its own I_T
nexus, RFC 7143 §4.4.1); iscsi-test-cu's MultipathIO suite given both paths."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

import earmark
from earmark.initiator.errors import ScsiStatusError
from earmark.runtime.initiator_device import discover
from earmark.scsi.sense import ScsiStatus
from tests.service.serving import Served, serve
from tools.peers import free_port, iscsi_test_cu

KEY = 0x1234_5678_9ABC_DEF0
INITIATOR = "iqn.2026-11.org.earmark:two-paths"


def prout(service_action: int, key: int, sa_key: int, pr_type: int = 0) -> tuple[bytes, bytes]:
    """PERSISTENT RESERVE OUT: its CDB and its 24-byte parameter list."""
    return (struct.pack(">BBBxxIx", 0x5F, service_action, pr_type, 24),
            struct.pack(">QQ8x", key, sa_key))


def two_urls(t: Served) -> tuple[str, str]:
    second = t.read_until("also listening on").split()[-1]
    url = t.read_until("iscsi://").strip()
    first = url.split("/")[2]
    return url, url.replace(first, second, 1)


@pytest.mark.tcp
def test_a_reservation_made_on_one_path_binds_the_other(tmp_path: Path) -> None:
    with serve(str(tmp_path / "d.img"), "--size", "4M", "--port", str(free_port()),
               "--portal", "127.0.0.1:0") as t:
        a_url, b_url = two_urls(t)
        (found,) = asyncio.run(discover(a_url.rsplit("/", 2)[0]))
        ports = {address.split(",")[0].rsplit(":", 1)[1] for address in found.addresses}
        assert ports == {a_url.split("/")[2].split(":")[1], b_url.split("/")[2].split(":")[1]}
        with earmark.open_sync(a_url, initiator_name=INITIATOR) as a, \
                earmark.open_sync(b_url, initiator_name=INITIATOR) as b:
            a.write(0, b"a" * 512)
            assert b.read(0, 512) == b"a" * 512
            cdb, params = prout(0x00, 0, KEY)  # REGISTER, on path A only
            a.execute(cdb, write_data=memoryview(params))
            cdb, params = prout(0x01, KEY, 0, pr_type=1)  # RESERVE, WRITE EXCLUSIVE
            a.execute(cdb, write_data=memoryview(params))
            with pytest.raises(ScsiStatusError) as fenced:
                b.write(512, b"b" * 512)
            assert fenced.value.status == ScsiStatus.RESERVATION_CONFLICT
            assert b.read(0, 512) == b"a" * 512  # reads are not fenced by WRITE EXCLUSIVE
            a.write(512, b"A" * 512)
            cdb, params = prout(0x02, KEY, 0, pr_type=1)  # RELEASE, on path A
            a.execute(cdb, write_data=memoryview(params))
            b.write(1024, b"b" * 512)
            assert a.read(512, 1024) == b"A" * 512 + b"b" * 512
        t.stop()


@pytest.mark.peers
def test_iscsi_test_cu_multipath_suite_passes_over_two_portals(tmp_path: Path) -> None:
    with serve(str(tmp_path / "d.img"), "--size", "16M", "--port", str(free_port()),
               "--portal", "127.0.0.1:0") as t:
        a_url, b_url = two_urls(t)
        result = iscsi_test_cu(a_url, tests="ALL.MultipathIO", second_url=b_url)
        t.stop()
    assert (result.passed, result.failed, result.skipped, result.crashed) == (4, 0, 0, False)
