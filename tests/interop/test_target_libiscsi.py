"""earmark's target against libiscsi's tools (iscsi-inq, -readcapacity16, -ls, -perf)."""

from __future__ import annotations

import pytest

from earmark.runtime.embedded import EmbeddedTarget
from tests.arena_settled import arena_settled_from_thread
from tests.targets import embedded_with
from tools import peers

IQN = "iqn.2026-11.org.earmark:test"
SIZE = 8 << 20


def url(target: EmbeddedTarget, cred: str = "") -> str:
    return f"iscsi://{cred}127.0.0.1:{target.server.port}/{target.iqn}/0"


# The shared embedded target (tests/conftest.py), with this module's size, arena and IQN.
WITH_TARGET = embedded_with(SIZE, memory=16 << 20, iqn=IQN)


@pytest.mark.peers
@WITH_TARGET
def test_libiscsi_tools_see_the_disk(embedded_target: EmbeddedTarget) -> None:
    inq = peers.iscsi_inq(url(embedded_target))
    assert inq.is_disk and "EARMARK" in inq.vendor
    block_size, num_blocks = peers.iscsi_readcapacity16(url(embedded_target))
    assert (block_size, num_blocks) == (512, SIZE // 512)
    (found,) = peers.iscsi_ls(f"iscsi://127.0.0.1:{embedded_target.server.port}")
    assert found.iqn == IQN
    # Every connection gave its receive buffer and slots back.
    arena_settled_from_thread(embedded_target, 0)


@pytest.mark.peers
@WITH_TARGET
def test_iscsi_perf_reads_through_reserved_buffers(embedded_target: EmbeddedTarget) -> None:
    result = peers.iscsi_perf(url(embedded_target), blocks=8, queue_depth=8, seconds=1)
    assert result.iops > 0
    assert embedded_target.server.arena.high_water <= embedded_target.server.arena.capacity


@pytest.mark.peers
@embedded_with(SIZE, iqn=IQN, chap=("user", "secret-12345"))
def test_chap_right_secret_logs_in_and_wrong_one_is_refused(
    embedded_target: EmbeddedTarget,
) -> None:
    assert peers.iscsi_inq(url(embedded_target, "user%secret-12345@")).is_disk
    with pytest.raises(peers.PeerError):
        peers.iscsi_inq(url(embedded_target, "user%wrong-secret@"))
    with pytest.raises(peers.PeerError):
        peers.iscsi_inq(url(embedded_target))
