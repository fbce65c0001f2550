"""The blocking engine (`earmark.open_sync`) against real targets: tgtd and `earmark serve`.

Each test starts its peers itself on 127.0.0.1 and a free port, and stops them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

import earmark
from earmark import cli
from earmark.initiator.device import RECEIVE_BUFFER_BYTES
from earmark.initiator.errors import (
    AuthenticationFailedError,
    InitiatorError,
    TargetNotFoundError,
)
from earmark.initiator.session import Timeouts
from earmark.memory import Arena
from earmark.runtime.embedded import EmbeddedTarget
from earmark.runtime.initiator_sync import SyncBlockDevice
from earmark.scsi.sense import ScsiError, SenseKey
from tests.targets import TgtdSpec, embedded_with, shuffled_spans
from tools.peers import Tgtd, free_port

LUN_BYTES = TgtdSpec.lun_bytes  # the shared tgtd's LUN; the embedded target's too
CHAP = ("earmark-user", "earmark-secret-0123")


def random_pattern_round_trip(url: str) -> None:
    """Random-sized writes over the whole LUN (some larger than one command, so R2T and
    Data-Out), then everything read back with another chunking."""
    rng = random.Random(7)
    with earmark.open_sync(url) as dev:
        assert dev.size == LUN_BYTES
        model = bytearray(os.urandom(LUN_BYTES))
        pieces = shuffled_spans(rng, LUN_BYTES,
                                [512, 4096, 12288, 65536, 300 * 512, 1 << 20, 3 << 20])
        for o, n in pieces:
            dev.write(o, memoryview(model)[o : o + n])
        dev.flush()
        back = bytearray(LUN_BYTES)
        view = memoryview(back)
        step = 256 * 1024 + 512
        for o in range(0, LUN_BYTES, step):
            dev.readinto(o, view[o : min(o + step, LUN_BYTES)])
        assert back == model


def test_round_trip_against_tgtd(tgtd: Tgtd) -> None:
    random_pattern_round_trip(tgtd.url())


@embedded_with(LUN_BYTES)
def test_round_trip_against_earmark_serve(embedded_target: EmbeddedTarget) -> None:
    random_pattern_round_trip(embedded_target.url)
    with earmark.open_sync(embedded_target.url) as dev:  # tgtd's file LUN has no UNMAP
        dev.write(1 << 20, b"\x33" * 4096)
        dev.discard(1 << 20, 4096)
        assert dev.read(1 << 20, 4096) in (b"\x33" * 4096, bytes(4096))


def test_errors_are_typed_and_in_words(tgtd: Tgtd) -> None:
    with earmark.open_sync(tgtd.url()) as dev:
        with pytest.raises(ScsiError) as err:
            dev.execute(bytes([0x88, 0, 0, 0, 0, 0, 0xFF, 0, 0, 0, 0, 0, 0, 8, 0, 0]),
                        read_into=memoryview(bytearray(4096)))
        assert err.value.key == SenseKey.ILLEGAL_REQUEST
        with pytest.raises(ValueError, match="multiples"):
            dev.read(100, 512)
        with pytest.raises(ValueError, match="past the end"):
            dev.read(LUN_BYTES, 512)
        dev.write(0, b"\x11" * 512)  # the session is still good after the errors
        assert dev.read(0, 512) == b"\x11" * 512
    with pytest.raises(TargetNotFoundError):
        earmark.open_sync(f"iscsi://127.0.0.1:{tgtd.port}/iqn.2024-01.org.earmark:nope/1")
    with pytest.raises(InitiatorError, match="cannot reach"):
        earmark.open_sync(f"iscsi://127.0.0.1:{free_port()}/{tgtd.iqn}/1")


@pytest.mark.peers
def test_chap_right_and_wrong() -> None:
    with Tgtd(1 << 20, chap=CHAP) as t:
        with earmark.open_sync(t.auth_url()) as dev:
            assert dev.size == 1 << 20
        with pytest.raises(AuthenticationFailedError):
            earmark.open_sync(t.url(user=CHAP[0], password="wrong-secret-0123"))


def test_an_arena_too_small_is_an_error_in_words_not_a_hang(tgtd: Tgtd) -> None:
    recv = RECEIVE_BUFFER_BYTES
    with pytest.raises(InitiatorError, match="larger"):
        SyncBlockDevice(tgtd.url(), arena=Arena(recv // 2))
    arena = Arena(recv + 4096)  # the receive buffer and about one small command
    with SyncBlockDevice(tgtd.url(), arena=arena) as dev:
        dev.write(0, b"\x22" * 512)
        assert arena.committed <= arena.capacity
        # Everything but the connection's receive buffer: the device's kept command
        # reservations are given back for it.
        held = arena.reserve_now({0: arena.capacity - recv}, owner="other")
        assert held is not None and dev.admission.idle == []
        with pytest.raises(InitiatorError, match="larger arena"):
            dev.read(0, 512)
        held.release()
        assert dev.read(0, 512) == b"\x22" * 512
    assert arena.committed == 0 and arena.holdings() == {}


def test_threads_take_turns_on_one_device(tgtd: Tgtd) -> None:
    with earmark.open_sync(tgtd.url()) as dev:
        blocks = {i: os.urandom(4096) for i in range(64)}

        def writer(keys: list[int]) -> None:
            for k in keys:
                dev.write(k * 4096, blocks[k])

        threads = [threading.Thread(target=writer, args=(list(range(i, 64, 4)),))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(dev.read(k * 4096, 4096) == data for k, data in blocks.items())


@pytest.mark.peers
def test_target_killed_and_restarted_mid_workload(tmp_path: Path) -> None:
    """SIGKILL tgtd between and during writes, start a new one on the same port and LUN
    file: the device reinstates its session, sends the unanswered write again, and every
    acknowledged write is on the disk."""
    lun = tmp_path / "lun.img"
    with open(lun, "wb") as f:
        f.truncate(4 << 20)
    port = free_port()
    running = [Tgtd(lun, port=port).start()]
    acked: dict[int, bytes] = {}
    done = [0]
    stop = threading.Event()
    try:
        url = f"iscsi://127.0.0.1:{port}/{running[0].iqn}/1"
        with SyncBlockDevice(url, reconnect_timeout=30,
                             timeouts=Timeouts(command=5, nop_interval=1, nop_timeout=3)) as dev:

            def writer() -> None:
                rng = random.Random(3)
                while not stop.is_set():
                    block = rng.randrange(1024)
                    data = os.urandom(4096)
                    dev.write(block * 4096, data)
                    acked[block] = data
                    done[0] += 1

            thread = threading.Thread(target=writer)
            thread.start()
            for _ in range(2):
                mark, deadline = done[0], time.monotonic() + 30
                while done[0] < mark + 50:  # writes under way before the kill
                    assert time.monotonic() < deadline, "no writes before the kill"
                    time.sleep(0.01)
                old = running[-1]
                assert old.pid is not None
                os.kill(old.pid, signal.SIGKILL)
                old.stop()
                running.append(Tgtd(lun, port=port).start())
                mark = done[0]
                deadline = time.monotonic() + 30
                while dev.reconnects < len(running) - 1 or done[0] < mark + 50:
                    assert time.monotonic() < deadline, "no progress after the restart"
                    time.sleep(0.05)
            stop.set()
            thread.join()
            for block, data in acked.items():
                assert dev.read(block * 4096, 4096) == data, f"block {block} lost"
            assert dev.reconnects >= 2 and dev.reissued >= 1
    finally:
        stop.set()
        for t in running:
            t.stop()
    disk = lun.read_bytes()
    assert len(acked) > 100
    assert all(disk[b * 4096 : (b + 1) * 4096] == data for b, data in acked.items())


def test_stalled_target_times_out_then_the_write_completes(tgtd: Tgtd) -> None:
    """SIGSTOP tgtd: the write gets no answer within the command timeout, nor does its
    ABORT TASK, the connection is dropped, logins fail while tgtd is stopped; after
    SIGCONT the write goes out again on a reinstated session."""
    assert tgtd.pid is not None
    pid = tgtd.pid
    timeouts = Timeouts(command=1.0, nop_interval=5, nop_timeout=5, abort=0.5)
    with SyncBlockDevice(tgtd.url(), login_timeout=1.0, reconnect_timeout=30,
                         timeouts=timeouts) as dev:
        data = os.urandom(65536)
        os.kill(pid, signal.SIGSTOP)
        continued = threading.Event()

        def cont() -> None:
            continued.set()
            os.kill(pid, signal.SIGCONT)

        resume = threading.Timer(2.5, cont)
        resume.start()
        try:
            dev.write(1 << 20, data)
            assert continued.is_set()  # a stopped target answers nothing: it waited it out
        finally:
            resume.join()
        assert dev.read(1 << 20, 65536) == data
        assert dev.reconnects >= 1 and dev.reissued >= 1


def test_bench_picks_the_sync_engine_at_depth_one(
    tgtd: Tgtd, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["bench", tgtd.url(), "--qd", "1", "--time", "1.2", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["engine"] == "sync" and result["qd"] == 1 and result["ios"] > 0
    assert result["reconnects"] == 0 and result["aborts"] == 0
    assert 0 < result["lat_p50_us"] <= result["lat_p99_us"] <= result["lat_max_us"]
    code = cli.main(["bench", tgtd.url(), "--qd", "1", "--engine", "async", "--time", "1",
                     "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["engine"] == "async"
    code = cli.main(["bench", tgtd.url(), "--qd", "4", "--engine", "sync", "--time", "1"])
    out, err = capsys.readouterr()
    assert code == 2 and "--engine async" in err and len(err.strip().splitlines()) == 1


@pytest.mark.peers
def test_crc32c_digests_both_ways() -> None:
    with Tgtd(8 << 20) as t:
        for key in ("HeaderDigest", "DataDigest"):  # tgtd offers None only by default
            t.tgtadm("--lld", "iscsi", "--op", "update", "--mode", "target", "--tid", "1",
                     "--name", key, "--value", "CRC32C")
        with SyncBlockDevice(t.url(), digests=True) as dev:
            assert dev.params.header_digest and dev.params.data_digest
            data = os.urandom(3 << 20)  # large Data-In segments, received in place
            dev.write(1 << 20, data)
            assert dev.read(1 << 20, len(data)) == data
            assert dev.read(1 << 20, 4096) == data[:4096]
