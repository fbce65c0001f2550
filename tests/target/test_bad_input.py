"""Malformed PDUs against a running target: Reject or a logged close, never a traceback.

A raw socket client plays a broken or hostile initiator (garbage before login,
unknown opcodes, impossible lengths, commands outside the window, a wrong
digest) while a well-behaved session keeps working beside it. The target must
answer each with a Reject or close that one connection with a log line saying
why, keep serving the good session, and stay within its memory.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import earmark
from earmark.iscsi import pdu as P
from earmark.iscsi.framing import serialize
from earmark.iscsi.login import InitiatorLogin
from earmark.iscsi.opcodes import RejectReason
from earmark.iscsi.pdu import LoginRequest, LoginResponse, Pdu, Reject, ScsiCommand
from earmark.runtime.embedded import EmbeddedTarget
from earmark.scsi import cdb as C
from tests.targets import embedded_with
from tests.wire_reader import WireReader

# The shared embedded target (tests/conftest.py), small, in a tight arena.
WITH_TARGET = embedded_with(4 << 20, memory=8 << 20)

HOST_PORT: tuple[str, int] = ("127.0.0.1", 0)


class GoodSession:
    """A real initiator session on its own loop thread, checked between attacks."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.dev = earmark.open(url)
        self._run(self.dev.connect())
        self.round = 0

    def _run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def check(self) -> None:
        self.round += 1
        data = bytes([self.round % 256]) * 4096
        self._run(self.dev.write(8192, data))
        assert self._run(self.dev.read(8192, 4096)) == data

    def close(self) -> None:
        self._run(self.dev.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def good(embedded_target: EmbeddedTarget) -> Iterator[GoodSession]:
    session = GoodSession(embedded_target.url)
    yield session
    session.close()


def connect(target: EmbeddedTarget) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", target.server.port), timeout=5)
    sock.settimeout(5)
    return sock


def exchange(sock: socket.socket, reader: WireReader, pdu: Pdu) -> list[Pdu]:
    sock.sendall(b"".join(bytes(p) for p in serialize(pdu, False, False)))
    return read_some(sock, reader)


def read_some(sock: socket.socket, reader: WireReader) -> list[Pdu]:
    """PDUs the target sent, or [] once it closed the connection (or went quiet)."""
    got: list[Pdu] = []
    try:
        while not got:
            chunk = sock.recv(65536)
            if not chunk:
                return got
            got.extend(reader.feed(chunk))
    except (TimeoutError, ConnectionResetError):
        pass
    return got


PING = 0x7777_0001
#: NOP-Out, SCSI Command, Task Management, Text, Data-Out, Logout, SNACK: with random fields
#: these may be answered, ignored (RFC 7143 lets a target drop a stray Data-Out) or refused.
INITIATOR_OPCODES = (0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x10)
#: What a target may send a logged-in initiator.
ANSWERS = (P.NopIn, P.ScsiResponse, P.DataIn, P.R2T, P.TaskMgmtResponse, P.TextResponse,
           P.LogoutResponse, P.Reject, P.AsyncMessage)


def read_until_ping_or_close(sock: socket.socket, reader: WireReader) -> list[Pdu]:
    """Every PDU up to the answer to the ping, or to the end of the connection; a target
    that says nothing for 5 s fails the test (the socket's timeout)."""
    got: list[Pdu] = []
    while not any(isinstance(r, P.NopIn) and r.itt == PING for r in got):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got.extend(reader.feed(chunk))
    return got


def logged_in(target: EmbeddedTarget, **wants: str) -> tuple[socket.socket, WireReader,
                                                             InitiatorLogin]:
    sock = connect(target)
    reader = WireReader(1 << 20)
    login = InitiatorLogin("iqn.2026-11.org.earmark:attacker", target_name=target.iqn,
                           isid=0x80_0000_0001, wants={"InitialR2T": "Yes",
                                                       "ImmediateData": "No", **wants})
    req: LoginRequest | None = login.start()
    while req is not None:
        (resp,) = exchange(sock, reader, req)
        assert isinstance(resp, LoginResponse)
        req = login.receive(resp)
    reader.set_digests(login.params.header_digest, login.params.data_digest)
    return sock, reader, login


def still_fine(target: EmbeddedTarget, good: GoodSession, caplog: pytest.LogCaptureFixture) -> None:
    good.check()
    assert target.arena.high_water <= target.arena.capacity
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks[0].getMessage()


SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@WITH_TARGET
@SETTINGS
@given(garbage=st.binary(min_size=1, max_size=600))
def test_garbage_before_login_closes_only_that_connection(
    embedded_target: EmbeddedTarget, good: GoodSession, caplog: pytest.LogCaptureFixture,
    garbage: bytes,
) -> None:
    caplog.clear()  # this example's records only
    caplog.set_level(logging.INFO)
    with connect(embedded_target) as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        # Whatever it said, the target ends this connection and nothing else.
        while sock.recv(65536):
            pass
    still_fine(embedded_target, good, caplog)


@WITH_TARGET
@SETTINGS
@given(opcode=st.integers(0, 0x3F), body=st.binary(min_size=47, max_size=47))
def test_unknown_or_mangled_pdus_get_reject_or_a_logged_close(
    embedded_target: EmbeddedTarget, good: GoodSession, caplog: pytest.LogCaptureFixture,
    opcode: int, body: bytes,
) -> None:
    caplog.clear()  # this example's records only: the fixture outlives the examples
    caplog.set_level(logging.INFO)
    sock, reader, login = logged_in(embedded_target)
    with sock:
        # A BHS with any opcode and random fields, its lengths zeroed so it frames; then a
        # ping. A PDU the target may rightly ignore (a stray Data-Out, an unsolicited
        # NOP-Out reply) gets no answer, but the ping must: silence is not fine.
        bhs = bytearray(bytes([opcode]) + body)
        bhs[4:8] = bytes(4)
        ping = P.NopOut(itt=PING, immediate=True, cmd_sn=login.cmd_sn,
                        exp_stat_sn=login.exp_stat_sn)
        sock.sendall(bytes(bhs) + b"".join(bytes(p) for p in serialize(ping, False, False)))
        replies = read_until_ping_or_close(sock, reader)
    answered = any(isinstance(r, P.NopIn) and r.itt == PING for r in replies)
    closed = [r.getMessage() for r in caplog.records if ": closing: " in r.getMessage()]
    logged_out = any(isinstance(r, P.LogoutResponse) for r in replies)
    assert answered or closed or logged_out, (replies, caplog.records)
    if opcode not in INITIATOR_OPCODES:  # not a PDU an initiator sends: it must be refused
        assert closed or any(isinstance(r, P.Reject) for r in replies), replies
    assert all(isinstance(r, ANSWERS) for r in replies), replies
    still_fine(embedded_target, good, caplog)


@WITH_TARGET
def test_oversize_segment_out_of_window_command_and_bad_digest(
    embedded_target: EmbeddedTarget, good: GoodSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # A data segment far beyond what the target declared it accepts.
    sock, reader, login = logged_in(embedded_target)
    with sock:
        cmd = ScsiCommand(itt=1, cdb=C.test_unit_ready(), cmd_sn=login.cmd_sn,
                          exp_stat_sn=login.exp_stat_sn)
        header = bytearray(b"".join(bytes(p) for p in serialize(cmd, False, False)))
        header[5:8] = (0xFFFFFF).to_bytes(3, "big")
        sock.sendall(bytes(header))
        replies = read_some(sock, reader)
        assert all(isinstance(r, Reject) for r in replies)
    assert any("exceeds MaxRecvDataSegmentLength" in r.getMessage() for r in caplog.records)
    still_fine(embedded_target, good, caplog)

    # A command far outside the CmdSN window is ignored, as RFC 7143 says; the
    # session goes on and answers the next in-window command.
    sock, reader, login = logged_in(embedded_target)
    with sock:
        stray = ScsiCommand(itt=2, cdb=C.test_unit_ready(), cmd_sn=login.cmd_sn + 100_000,
                            exp_stat_sn=login.exp_stat_sn)
        sock.sendall(b"".join(bytes(p) for p in serialize(stray, False, False)))
        ok = ScsiCommand(itt=3, cdb=C.test_unit_ready(), cmd_sn=login.cmd_sn,
                         exp_stat_sn=login.exp_stat_sn)
        replies = exchange(sock, reader, ok)
        assert [getattr(r, "itt", None) for r in replies] == [3]
    still_fine(embedded_target, good, caplog)

    # A header digest that does not match, on a session that negotiated digests.
    sock = connect(embedded_target)
    reader = WireReader(1 << 20)
    login = InitiatorLogin("iqn.2026-11.org.earmark:digests", target_name=embedded_target.iqn,
                           isid=0x80_0000_0002, wants={"HeaderDigest": "CRC32C"})
    req: LoginRequest | None = login.start()
    with sock:
        while req is not None:
            (resp,) = exchange(sock, reader, req)
            assert isinstance(resp, LoginResponse)
            req = login.receive(resp)
        assert login.params.header_digest
        cmd = ScsiCommand(itt=4, cdb=C.test_unit_ready(), cmd_sn=login.cmd_sn,
                          exp_stat_sn=login.exp_stat_sn)
        wire = bytearray(b"".join(bytes(p) for p in serialize(cmd, True, False)))
        wire[48] ^= 0xFF  # corrupt the header digest
        sock.sendall(bytes(wire))
        reader.set_digests(True, False)
        # The header cannot be trusted, so neither can where the next PDU starts: no
        # answer to the command (not even a Reject), and the connection is dropped.
        assert read_some(sock, reader) == []
        assert sock.recv(1) == b""  # closed (a timeout if it were not)
    closes = [r.getMessage() for r in caplog.records if "closing" in r.getMessage()]
    assert any(m.endswith("closing: header digest mismatch") for m in closes), closes
    still_fine(embedded_target, good, caplog)


@WITH_TARGET
def test_each_bad_pdu_gets_the_reject_reason_that_answers_it(
    embedded_target: EmbeddedTarget, good: GoodSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sock, reader, login = logged_in(embedded_target)
    with sock:
        # An opcode no initiator sends, then a NOP-Out with an AHS it cannot have: each
        # is rejected with its own reason, and the session goes on.
        unknown = bytearray(P.encode_header(P.NopOut(itt=5, immediate=True)))
        unknown[0] = 0x1B
        mangled = bytearray(P.encode_header(P.NopOut(itt=6, immediate=True)))
        mangled[4] = 1  # TotalAHSLength: one word
        sock.sendall(bytes(unknown) + bytes(mangled) + bytes(4))
        replies = read_some(sock, reader)
        if len(replies) < 2:
            replies += read_some(sock, reader)
        assert [(type(r).__name__, getattr(r, "reason", None)) for r in replies] == [
            ("Reject", RejectReason.COMMAND_NOT_SUPPORTED),
            ("Reject", RejectReason.PROTOCOL_ERROR)]
        assert bytes(getattr(replies[0], "data", b"")) == bytes(unknown)
        ok = ScsiCommand(itt=3, cdb=C.test_unit_ready(), cmd_sn=login.cmd_sn,
                         exp_stat_sn=login.exp_stat_sn)
        assert [getattr(r, "itt", None) for r in exchange(sock, reader, ok)] == [3]
    still_fine(embedded_target, good, caplog)

    # A data digest that does not match: DATA_DIGEST_ERROR, then the connection closes.
    caplog.clear()
    sock, reader, login = logged_in(embedded_target, DataDigest="CRC32C")
    with sock:
        assert login.params.data_digest
        ping = bytearray(b"".join(bytes(p) for p in serialize(
            P.NopOut(itt=7, immediate=True, cmd_sn=login.cmd_sn, data=b"ping"), False, True)))
        ping[-1] ^= 0xFF
        sock.sendall(bytes(ping))
        replies = read_some(sock, reader)
        assert [(type(r).__name__, getattr(r, "reason", None)) for r in replies] == [
            ("Reject", RejectReason.DATA_DIGEST_ERROR)]
        assert sock.recv(1) == b""  # closed (a timeout if it were not)
    assert any("closing: data digest mismatch" in r.getMessage() for r in caplog.records)
    still_fine(embedded_target, good, caplog)

