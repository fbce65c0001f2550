"""An initiator that sends commands and never reads the answers: the target stops reading
its commands once the unsent answers pass a high-water mark, so the bytes it queues for
that initiator (outside the arena) stay bounded instead of growing with every command."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from earmark.iscsi.framing import serialize
from earmark.iscsi.pdu import ScsiCommand
from earmark.runtime.embedded import EmbeddedTarget
from earmark.runtime.initiator_sync import SyncBlockDevice
from earmark.scsi import cdb as C
from earmark.target.backing import MemoryBacking

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
