"""An initiator that sends a window of reads at once and does not read the answers: once
the transport holds its high-water mark of unsent bytes the target stops reading commands
and keeps the rest of the answers in their slots' buffers (in the arena), so the bytes it
queues for that initiator (outside the arena) stay bounded instead of growing with every
command. The tests wait on the connection's own callbacks, never on a clock."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from earmark.iscsi.framing import serialize
from earmark.iscsi.pdu import BHS_LENGTH, DataIn, ScsiCommand
from earmark.runtime.connection import TargetConnection
from earmark.runtime.embedded import EmbeddedTarget
from earmark.runtime.initiator_sync import SyncBlockDevice
from earmark.scsi import cdb as C
from earmark.target.backing import MemoryBacking
from earmark.target.loop_io import INLINE_BYTES
from earmark.target.session import DEFAULT_CONFIG, UNSENT_HIGH
from tests.wire_reader import WireReader

pytestmark = pytest.mark.tcp

READ_BYTES = 256 << 10
COMMANDS = 120
WINDOW = 64  # the target's most command slots per session (TargetPortal.max_slots)
#: The callbacks after which the connection may have settled: it paused writing, read
#: commands (and did reads on the loop), or finished a read on a thread.
_SETTLING = ("pause_writing", "buffer_updated", "_resume")


def _connected(target: EmbeddedTarget) -> tuple[SyncBlockDevice, socket.socket]:
    """A logged-in initiator whose window the target has opened whole; the test then
    drives its socket by hand."""
    dev = SyncBlockDevice(target.url)
    session, sock = dev.session, dev._sock
    assert session is not None and sock is not None
    for _ in range(10_000):  # until the target's admission has opened the whole window
        if session.max_cmd_sn - session.cmd_sn + 1 >= WINDOW:
            break
        dev.read(0, 512)
    assert session.max_cmd_sn - session.cmd_sn + 1 >= WINDOW
    return dev, sock


def _burst(dev: SyncBlockDevice, count: int, nbytes: int) -> bytes:
    """`count` reads of `nbytes` each (the k-th at k x nbytes), ITT 1000 + k, as one send."""
    session = dev.session
    assert session is not None
    return b"".join(
        b"".join(serialize(ScsiCommand(
            itt=1000 + k, cdb=C.read_16(k * nbytes // 512, nbytes // 512),
            expected_data_transfer_length=nbytes, cmd_sn=session.cmd_sn + k,
            exp_stat_sn=session.exp_stat_sn, read=True, final=True), False, False))
        for k in range(count))


def _settled(target: EmbeddedTarget, send: Callable[[], None], first: int,
             small_sndbuf: bool = False) -> tuple[int, int]:
    """Run `send`, then wait until the target has stopped for want of a reader on our
    side: its transport paused writing and no read is running. Checked after each of the
    connection's `_SETTLING` callbacks, on the target's loop. What the transport then
    holds unsent, and how many commands (from CmdSN `first`) the target took."""
    loop = target.loop

    async def watch() -> asyncio.Future[tuple[int, int]]:
        (conn,) = target.server.connections.values()
        if small_sndbuf:  # so the socket takes few of the answers: the transport queues them
            assert conn.transport is not None
            conn.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        settled: asyncio.Future[tuple[int, int]] = loop.create_future()

        def check(conn: TargetConnection) -> None:
            if not settled.done() and conn._write_paused and not conn._io_running:
                assert conn.transport is not None and conn.session is not None
                settled.set_result((conn.transport.get_write_buffer_size(),
                                    conn.session.exp_cmd_sn - first))

        def hooked(callback: Callable[..., object]) -> Callable[..., object]:
            def after(*args: object) -> object:
                result = callback(*args)
                check(conn)
                return result
            return after

        for name in _SETTLING:
            setattr(conn, name, hooked(getattr(conn, name)))
        return settled

    settled = asyncio.run_coroutine_threadsafe(watch(), loop).result(10)
    send()

    async def wait() -> tuple[int, int]:
        async with asyncio.timeout(30):
            return await settled

    return asyncio.run_coroutine_threadsafe(wait(), loop).result(40)


def test_unsent_answers_stay_bounded_when_the_initiator_stops_reading() -> None:
    """More reads than the window, at once: the target takes the window's worth (the
    rest fall outside it), and what it queues stays far below their 16 MiB of answers."""
    with EmbeddedTarget(MemoryBacking(COMMANDS * READ_BYTES)) as target:
        dev, sock = _connected(target)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert dev.session is not None
        first, burst = dev.session.cmd_sn, _burst(dev, COMMANDS, READ_BYTES)
        unsent, read = _settled(target, lambda: sock.sendall(burst), first)
        sock.close()
    # Without the hold every read admitted was answered into the transport: about
    # 12 MB for a window of 64 (and once without the window, 75 MB for 300 commands).
    assert unsent < 4 << 20, f"{unsent} B queued for an initiator that reads nothing"
    assert 0 < read < COMMANDS


def _held_window(nbytes: int, small_sndbuf: bool = False) -> int:
    """A window of `nbytes` reads at once, to an initiator that reads nothing yet, then
    reads everything: what the transport held unsent once the target had settled (every
    command in); every answer is checked whole."""
    backing = MemoryBacking(WINDOW * nbytes)
    pattern = bytes(range(251)) * (nbytes // 251 + 1)
    for k in range(WINDOW):
        backing.write(k * nbytes, [memoryview(pattern[k : k + nbytes])])
    with EmbeddedTarget(backing) as target:
        dev, sock = _connected(target)
        assert dev.session is not None
        first, burst = dev.session.cmd_sn, _burst(dev, WINDOW, nbytes)
        unsent, read = _settled(target, lambda: sock.sendall(burst), first, small_sndbuf)
        assert read == WINDOW
        sock.settimeout(30)
        reader, answers = WireReader(1 << 24), dict.fromkeys(range(WINDOW), b"")
        done: set[int] = set()
        while len(done) < WINDOW:
            chunk = sock.recv(1 << 20)
            assert chunk, "the target closed the connection"
            for pdu in reader.feed(chunk):
                assert isinstance(pdu, DataIn) and pdu.status == 0, pdu
                k = pdu.itt - 1000
                answers[k] += bytes(pdu.data)
                if pdu.status_present:
                    done.add(k)
        sock.close()
    for k in range(WINDOW):
        assert answers[k] == pattern[k : k + nbytes], f"read {k}"
    return unsent


def test_a_burst_of_large_reads_keeps_its_answers_in_the_arena_until_sent() -> None:
    """A window of 256 KiB reads at once: each read's I/O lands in its slot's buffer
    (reserved), but once the transport holds its high-water mark of unsent bytes the
    answers wait there, not in the transport (which copies them out of the arena)."""
    unsent = _held_window(READ_BYTES)
    # Before: every answer went to the transport, about 12.6 MB for this window.
    assert unsent <= UNSENT_HIGH + DEFAULT_CONFIG.buffer_bytes, f"{unsent} B unsent"


def test_a_burst_of_small_reads_done_on_the_loop_keeps_its_answers_in_the_arena() -> None:
    """A window of reads small enough to be done on the loop, at once, so in one pump:
    the pump stops handing their answers to the transport where it would pause, and the
    rest wait in their slots like large reads. The target's socket takes little, so
    what it does not take shows in the transport."""
    unsent = _held_window(INLINE_BYTES, small_sndbuf=True)
    # Before: the pump's batch went to the transport whole: 4164608 B here.
    assert unsent <= UNSENT_HIGH + BHS_LENGTH + INLINE_BYTES, f"{unsent} B unsent"
