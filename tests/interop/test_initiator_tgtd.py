"""The initiator against a real target (tgtd on 127.0.0.1, a free port, started here)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import earmark
from earmark import cli
from earmark.initiator.device import RECEIVE_BUFFER_BYTES
from earmark.initiator.errors import (
    AuthenticationFailedError,
    BadUrlError,
    ConnectError,
    TargetNotFoundError,
)
from earmark.initiator.session import InitiatorSession, Timeouts
from earmark.memory import Arena
from earmark.runtime.initiator_device import BlockDevice, discover
from earmark.scsi.sense import ScsiError, SenseKey
from tests.tally import Tally, count_calls
from tests.targets import TgtdSpec, shuffled_spans, tgtd_with
from tools.peers import Tgtd, free_port

pytestmark = pytest.mark.peers

LUN_BYTES = TgtdSpec.lun_bytes  # the shared tgtd's LUN
CHAP = ("earmark-user", "earmark-secret-0123")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_discovery_and_ls(tgtd: Tgtd, capsys: pytest.CaptureFixture[str]) -> None:
    found = asyncio.run(discover(tgtd.portal_url()))
    assert [t.name for t in found] == [tgtd.iqn]
    assert found[0].addresses[0].startswith(f"127.0.0.1:{tgtd.port},")
    code, out, _ = run_cli(["ls", tgtd.portal_url()], capsys)
    assert code == 0
    assert f"Target: {tgtd.iqn}" in out
    assert "LUN 1: disk" in out and "8 MiB (16384 blocks of 512 B)" in out


def test_random_pattern_across_the_whole_lun(tgtd: Tgtd) -> None:
    rng = random.Random(4)

    async def main() -> None:
        async with earmark.open(tgtd.url()) as dev:
            assert (dev.size, dev.block_size) == (LUN_BYTES, 512)
            model = bytearray(os.urandom(LUN_BYTES))
            # Write it all in random-sized pieces, several in flight at once.
            pieces = shuffled_spans(rng, LUN_BYTES,
                                    [512, 4096, 12288, 65536, 300 * 512, 1 << 20, 3 << 20])
            for i in range(0, len(pieces), 8):
                await asyncio.gather(*(dev.write(o, memoryview(model)[o : o + n])
                                       for o, n in pieces[i : i + 8]))
            await dev.flush()
            # Read it back with another chunking, concurrently, into one buffer.
            back = bytearray(LUN_BYTES)
            view = memoryview(back)
            step = 256 * 1024 + 512
            await asyncio.gather(*(dev.readinto(o, view[o : min(o + step, LUN_BYTES)])
                                   for o in range(0, LUN_BYTES, step)))
            assert back == model
            # And one small overwrite seen by a single read.
            await dev.write(4096, b"\x5a" * 512)
            assert await dev.read(3584, 1536) == model[3584:4096] + b"\x5a" * 512 + \
                model[4608:5120]

    asyncio.run(main())
    assert Path(tgtd.lun_path).read_bytes()[4096:4608] == b"\x5a" * 512


def test_sense_is_raised_in_words(tgtd: Tgtd) -> None:
    async def main() -> None:
        async with earmark.open(tgtd.url()) as dev:
            with pytest.raises(ScsiError) as err:
                await dev.execute(bytes([0x88, 0, 0, 0, 0, 0, 0xFF, 0, 0, 0, 0, 0, 0, 8, 0, 0]),
                                  read_into=memoryview(bytearray(4096)))
            assert err.value.key == SenseKey.ILLEGAL_REQUEST
            assert "LOGICAL BLOCK ADDRESS OUT OF RANGE" in str(err.value)
            with pytest.raises(ValueError, match="multiples"):
                await dev.read(100, 512)

    asyncio.run(main())


def test_crc32c_digests_both_ways() -> None:
    async def main(url: str) -> None:
        async with BlockDevice(url, digests=True) as dev:
            assert dev.params.header_digest and dev.params.data_digest
            data = os.urandom(3 << 20)  # large Data-In segments, received in place
            await dev.write(1 << 20, data)
            assert await dev.read(1 << 20, len(data)) == data
            assert await dev.read(1 << 20, 4096) == data[:4096]

    with Tgtd(8 << 20) as t:
        for key in ("HeaderDigest", "DataDigest"):  # tgtd offers None only by default
            t.tgtadm("--lld", "iscsi", "--op", "update", "--mode", "target", "--tid", "1",
                     "--name", key, "--value", "CRC32C")
        asyncio.run(main(t.url()))


def test_mutual_chap() -> None:
    with Tgtd(1 << 20, chap=CHAP, mutual=("tgtd-side", "tgtd-side-secret-01")) as t:
        async def main(url: str) -> int:
            async with earmark.open(url) as dev:
                return dev.size

        assert asyncio.run(main(t.auth_url())) == 1 << 20
        wrong = t.url(user=CHAP[0], password=CHAP[1], target_user="tgtd-side",
                      target_password="not-what-tgtd-says")
        with pytest.raises(AuthenticationFailedError):
            asyncio.run(main(wrong))


def test_sync_api_from_threads(tgtd: Tgtd) -> None:
    with earmark.open_sync(tgtd.url()) as dev:
        blocks = [(i * 8192, os.urandom(8192)) for i in range(32)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda b: dev.write(*b), blocks))
            got = list(pool.map(lambda b: dev.read(b[0], 8192), blocks))
        assert got == [data for _, data in blocks]
        dev.flush()
    threads = threading.active_count()
    with pytest.raises(TargetNotFoundError):
        earmark.open_sync(f"iscsi://127.0.0.1:{tgtd.port}/iqn.2024-01.org.earmark:nope/1")
    with pytest.raises(BadUrlError):
        earmark.open_sync("iscsi://127.0.0.1/no-lun")
    assert threading.active_count() == threads  # no loop thread left behind


def test_reserve_bounds_commands_in_flight(
    tgtd: Tgtd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An arena with room for the receive buffer and two 4 KiB reads admits two at a time."""
    peak = 0
    submit = InitiatorSession.submit

    def spy(self: InitiatorSession, cmd: object, now: float) -> None:
        nonlocal peak
        submit(self, cmd, now)  # type: ignore[arg-type]
        peak = max(peak, self.outstanding + self.queued)

    recv = RECEIVE_BUFFER_BYTES

    async def main() -> Arena:
        probe = BlockDevice(tgtd.url())
        async with probe:
            claim = probe.command_cost(False, 4096)
        arena = Arena(recv + 2 * sum(claim.values()))
        monkeypatch.setattr(InitiatorSession, "submit", spy)
        async with BlockDevice(tgtd.url(), arena=arena) as dev:
            bufs = [bytearray(4096) for _ in range(16)]
            await asyncio.gather(*(dev.readinto(i * 4096, b) for i, b in enumerate(bufs)))
            assert arena.committed > 0
        return arena

    arena = asyncio.run(main())
    assert peak == 2
    assert arena.committed == 0 and arena.high_water <= arena.capacity


@tgtd_with(1 << 20, chap=CHAP)
def test_chap_right_and_wrong(tgtd: Tgtd, capsys: pytest.CaptureFixture[str]) -> None:
    async def good() -> bytes:
        async with earmark.open(tgtd.auth_url()) as dev:
            await dev.write(0, b"c" * 512)
            return await dev.read(0, 512)

    assert asyncio.run(good()) == b"c" * 512

    async def env_creds() -> int:
        env = {"EARMARK_CHAP_USER": CHAP[0], "EARMARK_CHAP_SECRET": CHAP[1]}
        async with BlockDevice(tgtd.url(), environ=env) as dev:
            return dev.size

    assert asyncio.run(env_creds()) == 1 << 20

    async def bad(url: str) -> None:
        async with earmark.open(url):
            pass

    with pytest.raises(AuthenticationFailedError, match="authentication failed"):
        asyncio.run(bad(tgtd.url(user=CHAP[0], password="wrong-secret-0123")))
    with pytest.raises(AuthenticationFailedError):
        asyncio.run(bad(tgtd.url()))  # no credentials at all
    for depth in ("32", "1"):  # the async engine, then the sync one
        code, out, err = run_cli(["bench", tgtd.url(user=CHAP[0],
                                                          password="wrong-secret-0123"),
                                  "--qd", depth, "--time", "1"], capsys)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert "authentication failed" in err and "wrong-secret" not in err


def test_errors_are_typed_and_one_line(tgtd: Tgtd, capsys: pytest.CaptureFixture[str]) -> None:
    unknown = f"iscsi://127.0.0.1:{tgtd.port}/iqn.2024-01.org.earmark:nope/1"
    closed = f"iscsi://127.0.0.1:{free_port()}/{tgtd.iqn}/1"

    async def open_(url: str) -> None:
        async with earmark.open(url):
            pass

    with pytest.raises(TargetNotFoundError, match="target not found"):
        asyncio.run(open_(unknown))
    with pytest.raises(ConnectError, match="cannot reach"):
        asyncio.run(open_(closed))
    with pytest.raises(BadUrlError):
        asyncio.run(open_("iscsi://127.0.0.1/no-lun"))
    for argv, words in (
        (["bench", unknown, "--time", "1"], "target not found"),
        (["bench", closed, "--time", "1"], "cannot reach"),
        (["bench", unknown, "--qd", "1", "--time", "1"], "target not found"),  # sync engine
        (["bench", closed, "--qd", "1", "--time", "1"], "cannot reach"),
        (["bench", "nonsense", "--qd", "1", "--time", "1"], "iscsi://"),
        (["ls", "iscsi://"], "no host"),
        (["bench", "nonsense", "--time", "1"], "iscsi://"),
        (["ls", f"iscsi://127.0.0.1:{free_port()}"], "cannot reach"),
    ):
        code, out, err = run_cli(argv, capsys)
        assert code == 2, argv
        assert out == "" and len(err.strip().splitlines()) == 1 and words in err, (argv, err)


def test_bench_json(tgtd: Tgtd, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    code, out, err = run_cli(["bench", tgtd.url(), "--rw", "randwrite", "--bs", "8k",
                              "--qd", "4", "--time", "1.2", "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["rw"] == "randwrite" and result["bs"] == 8192 and result["qd"] == 4
    assert result["ios"] > 0 and result["iops"] > 0
    assert 0 < result["lat_p50_us"] <= result["lat_p99_us"] <= result["lat_max_us"]
    assert "IOPS" in err  # the progress line


def test_target_killed_and_restarted_mid_workload(tmp_path: Path) -> None:
    """SIGKILL tgtd under writes, start a new one on the same port and LUN file: the
    initiator reinstates its session, reissues what was unanswered, and every
    acknowledged write is on the disk."""
    kill_restart_workload(tmp_path, kills=1, writers=8)


def test_target_killed_three_times_under_heavier_load(tmp_path: Path) -> None:
    kill_restart_workload(tmp_path, kills=3, writers=32, settle=400)


def kill_restart_workload(tmp_path: Path, *, kills: int, writers: int, settle: int = 200) -> None:
    lun = tmp_path / "lun.img"
    with open(lun, "wb") as f:
        f.truncate(4 << 20)
    port = free_port()
    running = [Tgtd(lun, port=port).start()]
    blocks = (4 << 20) // 4096

    def kill_and_restart() -> None:
        old = running[-1]
        assert old.pid is not None
        os.kill(old.pid, signal.SIGKILL)
        old.stop()
        running.append(Tgtd(lun, port=port).start())

    async def main() -> tuple[dict[int, bytes], int, BlockDevice]:
        acked: dict[int, bytes] = {}
        done = Tally()
        stop = asyncio.Event()
        url = f"iscsi://127.0.0.1:{port}/{running[0].iqn}/1"
        dev = BlockDevice(url, reconnect_timeout=30,
                          timeouts=Timeouts(command=5, nop_interval=1, nop_timeout=3))
        reconnected = count_calls(dev, "reconnected")
        async with dev:

            async def writer(k: int) -> None:
                rng = random.Random(k)
                # Each writer owns its blocks and has one write in flight, so the
                # last acknowledged write of a block is what the disk must hold.
                mine = list(range(k, blocks, writers))
                while not stop.is_set():
                    block = rng.choice(mine)
                    data = os.urandom(4096)
                    await dev.write(block * 4096, data)
                    acked[block] = data
                    done.add()

            tasks = [asyncio.ensure_future(writer(k)) for k in range(writers)]
            before = 0
            for n in range(kills):
                async with asyncio.timeout(30):  # writes under way before the kill
                    await done.reach(done.count + settle)
                before = before or done.count
                await asyncio.to_thread(kill_and_restart)
                mark = done.count
                await reconnected.reach(n + 1)  # the session is back
                await done.reach(mark + settle)  # and writes go on
            stop.set()
            await asyncio.gather(*tasks)
            for block, data in acked.items():
                assert await dev.read(block * 4096, 4096) == data, f"block {block} lost"
            return acked, before, dev

    try:
        acked, before, dev = asyncio.run(asyncio.wait_for(main(), 90 * kills))
    finally:
        for t in running:
            t.stop()
    assert before > 0 and dev.reconnects >= kills and len(acked) > 50
    assert dev.reissued >= 1  # writes in flight at a kill went out again
    disk = lun.read_bytes()
    for block, data in acked.items():
        assert disk[block * 4096 : (block + 1) * 4096] == data


def test_stalled_target_times_out_and_the_command_completes_after_reconnect(
    tgtd: Tgtd,
) -> None:
    """SIGSTOP tgtd: the write times out, the connection is dropped, logins fail while it
    is stopped; after SIGCONT the session is reinstated and the write is reissued."""
    assert tgtd.pid is not None
    pid = tgtd.pid

    async def main() -> BlockDevice:
        dev = BlockDevice(tgtd.url(), login_timeout=1.0, reconnect_timeout=30,
                          timeouts=Timeouts(command=1.0, nop_interval=5, nop_timeout=5, abort=0.5))
        lost = count_calls(dev, "lost")
        async with dev:
            data = os.urandom(65536)
            os.kill(pid, signal.SIGSTOP)
            try:
                write = asyncio.ensure_future(dev.write(1 << 20, data))
                async with asyncio.timeout(30):  # the write timed out, the abort too: dropped
                    await lost.reach(1)
                assert dev.failure is not None and not write.done()
            finally:
                os.kill(pid, signal.SIGCONT)
            await asyncio.wait_for(write, 30)
            assert await dev.read(1 << 20, 65536) == data
        return dev

    dev = asyncio.run(main())
    assert dev.reconnects >= 1 and dev.reissued >= 1


@pytest.mark.parametrize("policy", ["none", "reserve"])
def test_policies_and_the_page_cache_path(tgtd: Tgtd, policy: str) -> None:
    """Under `none` the same charges are allocated on demand; a page cache that made its own
    reservation hands it down and the device draws exactly that."""
    from earmark.memory import HostLevel

    async def main() -> tuple[Arena, int]:
        arena = Arena(4 << 20)
        async with BlockDevice(tgtd.url(), arena=arena, policy=policy) as dev:
            page = memoryview(bytearray(os.urandom(4096)))
            # A finished command's reservation may be kept for the next command (until
            # anyone has to wait): drop those to see the books.
            dev.admission.drop_idle()
            before = arena.committed
            await dev.write(0, page)
            dev.admission.drop_idle()
            assert arena.committed == before  # everything given back
            cost = dev.command_cost(True, 4096)
            res = await arena.reserve(cost, owner="cache")
            with res.active():
                await dev.write_pages(8192, [page], owner="cache")
            # Drew exactly what command_cost promised, and freed it when the status came.
            assert res.left == 0 and res.held[HostLevel.TASK] == res.held[HostLevel.WIRE] == 0
            res.release()
            back = memoryview(bytearray(4096))
            await dev.read_page(8192, back, owner="cache")
            assert back == page and await dev.read(0, 4096) == page
            return arena, before

    arena, before = asyncio.run(main())
    assert arena.committed == 0 and before > 0


def test_a_timed_out_command_is_aborted_on_tgtd_without_losing_the_session(
    tgtd: Tgtd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGSTOP tgtd for longer than the command timeout but less than the abort's: the
    ABORT TASK goes out, tgtd answers it (or the write's status first) once it runs again,
    and the session survives with the data written."""
    assert tgtd.pid is not None
    pid = tgtd.pid
    sent_aborts = 0
    abort_task = InitiatorSession._abort_task

    def counting(self: InitiatorSession, cmd: object, now: float) -> None:
        nonlocal sent_aborts
        sent_aborts += 1
        abort_task(self, cmd, now)  # type: ignore[arg-type]

    monkeypatch.setattr(InitiatorSession, "_abort_task", counting)

    async def main() -> BlockDevice:
        dev = BlockDevice(tgtd.url(), reconnect_timeout=30,
                          timeouts=Timeouts(command=0.3, nop_interval=5, nop_timeout=5,
                                            abort=10))
        async with dev:
            data = os.urandom(65536)
            os.kill(pid, signal.SIGSTOP)
            asyncio.get_running_loop().call_later(1.0, os.kill, pid, signal.SIGCONT)
            try:
                await asyncio.wait_for(dev.write(3 << 20, data), 20)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert await dev.read(3 << 20, 65536) == data
        return dev

    dev = asyncio.run(main())
    assert sent_aborts >= 1 and dev.reconnects == 0
