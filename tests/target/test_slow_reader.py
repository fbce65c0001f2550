"""An initiator that sends commands and never reads the answers: the target stops reading
its commands once the unsent answers pass a high-water mark, so the bytes it queues for
that initiator (outside the arena) stay bounded instead of growing with every command."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from earmark.iscsi.framing import serialize
from earmark.iscsi.pdu import DataIn, ScsiCommand
from earmark.runtime.connection import _UNSENT_HIGH
from earmark.runtime.embedded import EmbeddedTarget
from earmark.runtime.initiator_sync import SyncBlockDevice
from earmark.scsi import cdb as C
from earmark.target.backing import MemoryBacking
from earmark.target.session import DEFAULT_CONFIG
from tests.wire_reader import WireReader

pytestmark = pytest.mark.tcp

READ_BYTES = 256 << 10
COMMANDS = 120


def test_unsent_answers_stay_bounded_when_the_initiator_stops_reading() -> None:
    with EmbeddedTarget(MemoryBacking(4 << 20)) as target:
        dev = SyncBlockDevice(target.url)  # logs in; then we drive the socket by hand
        session, sock = dev.session, dev._sock
        assert session is not None and sock is not None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        first = session.cmd_sn
        for k in range(COMMANDS):
            # Paced so that each lands in the window the previous answers opened, which
            # this initiator never reads but can count on.
            pdu = ScsiCommand(itt=1000 + k, cdb=C.read_16(0, READ_BYTES // 512),
                              expected_data_transfer_length=READ_BYTES, cmd_sn=first + k,
                              exp_stat_sn=session.exp_stat_sn, read=True, final=True)
            for piece in serialize(pdu, False, False):
                sock.sendall(piece)
            time.sleep(0.003)

        async def probe() -> tuple[int, int]:
            """Once the target has stopped reading for want of a reader on our side (its
            transport paused it): what it holds unsent, and how many commands it read."""
            async with asyncio.timeout(30):
                while True:
                    (conn,) = target.server.connections.values()
                    if conn._write_paused:
                        assert conn.transport is not None and conn.session is not None
                        return (conn.transport.get_write_buffer_size(),
                                conn.session.exp_cmd_sn - first)
                    await asyncio.sleep(0.01)

        unsent, read = asyncio.run_coroutine_threadsafe(probe(), target.loop).result(40)
        sock.close()
    # Before this, every command was read and answered into the transport: about
    # COMMANDS x 256 KiB (75 MB for 300 commands, past the target's 64 MiB arena).
    assert unsent < 4 << 20, f"{unsent} B queued for an initiator that reads nothing"
    assert 0 < read < COMMANDS


WINDOW = 64  # the target's most command slots per session (TargetPortal.max_slots)


def test_a_burst_of_large_reads_keeps_its_answers_in_the_arena_until_sent() -> None:
    """A window of 256 KiB reads at once, to an initiator that reads nothing yet: each
    read's I/O lands in its slot's buffer (reserved), but once the transport holds its
    high-water mark of unsent bytes the answers wait there, not in the transport (which
    copies them out of the arena). Then every answer arrives whole once it reads."""
    backing = MemoryBacking(WINDOW * READ_BYTES)
    pattern = bytes(range(251)) * (READ_BYTES // 251 + 1)
    for k in range(WINDOW):
        backing.write(k * READ_BYTES, [memoryview(pattern[k : k + READ_BYTES])])
    with EmbeddedTarget(backing) as target:
        dev = SyncBlockDevice(target.url)  # logs in; then we drive the socket by hand
        session, sock = dev.session, dev._sock
        assert session is not None and sock is not None
        for _ in range(10_000):  # until the target's admission has opened the whole window
            if session.max_cmd_sn - session.cmd_sn + 1 >= WINDOW:
                break
            dev.read(0, 512)
        assert session.max_cmd_sn - session.cmd_sn + 1 >= WINDOW
        first = session.cmd_sn
        sock.sendall(b"".join(
            b"".join(serialize(ScsiCommand(
                itt=1000 + k, cdb=C.read_16(k * READ_BYTES // 512, READ_BYTES // 512),
                expected_data_transfer_length=READ_BYTES, cmd_sn=first + k,
                exp_stat_sn=session.exp_stat_sn, read=True, final=True), False, False))
            for k in range(WINDOW)))

        async def probe() -> int:
            """Once every read is in and its I/O done: what the transport holds unsent."""
            async with asyncio.timeout(30):
                while True:
                    (conn,) = target.server.connections.values()
                    s = conn.session
                    if (s is not None and s.exp_cmd_sn - first == WINDOW
                            and not conn._io_running and conn._write_paused):
                        assert conn.transport is not None
                        return conn.transport.get_write_buffer_size()
                    await asyncio.sleep(0.01)

        unsent = asyncio.run_coroutine_threadsafe(probe(), target.loop).result(40)
        # Before: every answer went to the transport, about 12.6 MB for this window.
        assert unsent <= _UNSENT_HIGH + DEFAULT_CONFIG.buffer_bytes, f"{unsent} B unsent"
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
        assert answers[k] == pattern[k : k + READ_BYTES], f"read {k}"
