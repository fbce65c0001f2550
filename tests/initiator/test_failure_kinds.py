"""Both engines end a command out of attempts with the error its failure's kind names.

A fake target (login answered, READ CAPACITY answered, then every command
either ignored, aborts included, or answered by closing the connection) sits
behind a fake socket and a fake asyncio transport: a command that got no
answer ends in CommandTimeoutError, one whose connection closed in
SessionLostError, from the kind the connection failed with, whatever its words.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from earmark.initiator.errors import CommandTimeoutError, SessionLostError
from earmark.initiator.session import Timeouts
from earmark.iscsi.framing import serialize
from earmark.iscsi.login import TargetEntry, TargetLogin
from earmark.iscsi.pdu import LoginRequest, ScsiCommand, data_in_bhs
from earmark.runtime.initiator_device import BlockDevice
from earmark.runtime.initiator_sync import SyncBlockDevice
from tests.wire_reader import WireReader

IQN = "iqn.2024-01.org.earmark:fake"
URL = f"iscsi://127.0.0.1:3260/{IQN}/0"
FAST = Timeouts(command=0.2, abort=0.2, nop_interval=5.0, nop_timeout=5.0)
READ_CAPACITY_16 = 0x9E


class FakeTarget:
    """Bytes in, bytes out: ``silent`` ignores commands, otherwise it closes on them."""

    def __init__(self, silent: bool) -> None:
        self.silent = silent
        self.reader = WireReader(1 << 20)
        self.login = TargetLogin({IQN: TargetEntry(IQN)}, portal_group_tag=1)
        self.stat_sn = 0
        self.out = bytearray()
        self.closed = False

    def feed(self, data: bytes | memoryview) -> None:
        for pdu in self.reader.feed(data):
            self.stat_sn += 1
            if isinstance(pdu, LoginRequest):
                resp = self.login.receive(pdu, exp_cmd_sn=pdu.cmd_sn, max_cmd_sn=pdu.cmd_sn + 8,
                                          stat_sn=self.stat_sn)
                self.out += b"".join(bytes(p) for p in serialize(resp, False, False))
                if self.login.done:
                    self.stat_sn -= 1  # the first full feature phase StatSN is this one's
            elif isinstance(pdu, ScsiCommand) and pdu.cdb[0] == READ_CAPACITY_16:
                data_ = struct.pack(">QI", 2047, 512) + bytes(20)
                self.out += data_in_bhs(0x81, 0, 32, 0, pdu.itt, 0xFFFFFFFF, self.stat_sn,
                                        pdu.cmd_sn + 1, pdu.cmd_sn + 8, 0, 0, 0) + data_
            elif isinstance(pdu, ScsiCommand) and not self.silent:
                self.closed = True


class FakeSock:
    def __init__(self, target: FakeTarget) -> None:
        self.target = target

    def settimeout(self, timeout: float | None) -> None: ...

    def setsockopt(self, *args: object) -> None: ...

    def close(self) -> None: ...

    def send(self, piece: bytes) -> int:
        self.target.feed(piece)
        return len(piece)

    def sendmsg(self, pieces: list[bytes]) -> int:
        return sum(self.send(piece) for piece in pieces)

    def recv_into(self, buf: memoryview) -> int:
        out = self.target.out
        if not out:
            if self.target.closed:
                return 0
            raise BlockingIOError  # a tick of SO_RCVTIMEO passed
        n = min(len(buf), len(out))
        buf[:n] = out[:n]
        del out[:n]
        return n


@pytest.mark.parametrize(("silent", "error"), [(True, CommandTimeoutError),
                                               (False, SessionLostError)])
def test_the_blocking_engine_reads_the_kind(monkeypatch: pytest.MonkeyPatch, silent: bool,
                                            error: type[SessionLostError]) -> None:
    targets: list[FakeTarget] = []

    def connect(*args: object, **kwargs: object) -> FakeSock:
        if targets:  # the reconnect after the loss: refused, so the attempts run out
            raise ConnectionRefusedError(111, "Connection refused")
        targets.append(FakeTarget(silent))
        return FakeSock(targets[-1])

    monkeypatch.setattr(socket, "create_connection", connect)
    dev = SyncBlockDevice(URL, timeouts=FAST, max_attempts=1, reconnect_timeout=0.1)
    with pytest.raises(SessionLostError) as raised:
        dev.read(0, 512)
    assert type(raised.value) is error and "not done after 1 attempts" in str(raised.value)


class FakeTransport:
    def __init__(self, proto: asyncio.BufferedProtocol, target: FakeTarget) -> None:
        self.proto = proto
        self.target = target
        self.closing = False

    def writelines(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.target.feed(piece)
        asyncio.get_running_loop().call_soon(self._deliver)

    def _deliver(self) -> None:
        out = self.target.out
        while out and not self.closing:
            buf = memoryview(self.proto.get_buffer(-1))
            n = min(len(buf), len(out))
            buf[:n] = out[:n]
            del out[:n]
            self.proto.buffer_updated(n)
        if self.target.closed:
            self.close()

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.proto.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


@pytest.mark.parametrize(("silent", "error"), [(True, CommandTimeoutError),
                                               (False, SessionLostError)])
def test_the_asyncio_engine_reads_the_kind(silent: bool, error: type[SessionLostError]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        made: list[FakeTarget] = []

        async def create_connection(factory, host, port):  # type: ignore[no-untyped-def]
            if made:
                raise ConnectionRefusedError(111, "Connection refused")
            made.append(FakeTarget(silent))
            proto = factory()
            transport = FakeTransport(proto, made[-1])
            proto.connection_made(transport)
            return transport, proto

        loop.create_connection = create_connection  # type: ignore[method-assign,assignment]
        async with BlockDevice(URL, timeouts=FAST, max_attempts=1,
                               reconnect_timeout=0.1) as dev:
            with pytest.raises(SessionLostError) as raised:
                await dev.read(0, 512)
        assert type(raised.value) is error and "not done after 1 attempts" in str(raised.value)

    asyncio.run(main())
