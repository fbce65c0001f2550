"""The recovery decisions both engines take, without a socket or a clock.

Which finished commands go again on the same session, which unanswered ones
end when their connection fails and with which error (from the failure's
kind, never its words), and the schedule of login attempts after a loss.
"""

from __future__ import annotations

import pytest

from earmark.initiator.errors import (
    CommandAbortedError,
    CommandTimeoutError,
    ConnectError,
    ScsiStatusError,
    SessionLostError,
)
from earmark.initiator.failure import ConnectionFailed, FailureKind
from earmark.initiator.recovery import Backoff, Recovery
from earmark.initiator.session import Command
from earmark.scsi import cdb as C
from earmark.scsi.sense import ScsiError, SenseKey


def finished(attempts: int, error: Exception) -> Command:
    cmd = Command(C.read_16(0, 8), read_into=memoryview(bytearray(4096)))
    cmd.attempts, cmd.error, cmd.status = attempts, error, 2
    return cmd


def test_unit_attention_goes_again_a_few_times_beyond_the_attempts() -> None:
    rec = Recovery("here", max_attempts=2, reconnect_timeout=1.0)
    ua = ScsiError(SenseKey.UNIT_ATTENTION, 0x29, 0)
    again = [rec.send_again(finished(n, ua)) for n in range(1, 7)]
    assert again == [True, True, True, True, False, False]
    cmd = finished(1, ua)
    assert rec.send_again(cmd) and cmd.error is None and cmd.status is None
    assert (rec.aborts, rec.reissued) == (0, 0)  # the command was not run: not counted
    assert not rec.send_again(finished(1, ScsiError(SenseKey.MEDIUM_ERROR, 0x11, 0)))
    assert not rec.send_again(finished(1, ScsiStatusError(0x08)))


def test_an_aborted_command_goes_again_while_it_has_attempts_and_is_counted() -> None:
    rec = Recovery("here", max_attempts=2, reconnect_timeout=1.0)
    assert rec.send_again(finished(1, CommandAbortedError("aborted")))
    assert (rec.aborts, rec.reissued) == (1, 1)
    last = finished(2, CommandAbortedError("aborted"))
    assert not rec.send_again(last) and isinstance(last.error, CommandAbortedError)
    assert (rec.aborts, rec.reissued) == (1, 1)


@pytest.mark.parametrize("kind", list(FailureKind))
def test_a_command_out_of_attempts_ends_with_the_error_its_failures_kind_names(
    kind: FailureKind,
) -> None:
    rec = Recovery("iscsi://t/iqn.x/1", max_attempts=2, reconnect_timeout=1.0)
    # The words say "got no answer" whatever the kind: only the kind decides.
    failure = ConnectionFailed(kind, "command got no answer")
    assert rec.give_up(finished(1, ConnectError("x")), failure) is None
    error = rec.give_up(finished(2, ConnectError("x")), failure)
    assert isinstance(error, SessionLostError)
    assert isinstance(error, CommandTimeoutError) == (kind is FailureKind.TIMEOUT)
    assert str(error) == ("iscsi://t/iqn.x/1: command not done after 2 attempts: "
                          "command got no answer")
    closing = rec.lost_error(failure)
    assert type(closing) is SessionLostError and "got no answer" in str(closing)


def test_login_attempts_back_off_up_to_a_second_and_stop_at_the_deadline() -> None:
    backoff = Backoff(100.0, timeout=3.0)
    now, delays = 100.0, []
    while backoff.may_try(now):
        delays.append(backoff.failed(ConnectError(f"refused at {now:g}"), now))
        now += delays[-1]
    assert delays[:6] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert now == pytest.approx(103.0) and not backoff.may_try(now)
    assert delays[-1] < 1.0  # the last wait ends at the deadline, not past it
    error = backoff.gave_up("iscsi://t", ConnectionFailed(FailureKind.CLOSED, "reset"))
    assert type(error) is SessionLostError
    assert str(error).startswith("iscsi://t: connection lost (reset) and not re-established "
                                 "in 3 s: refused at 10")


def test_a_new_session_counts_the_commands_it_sends_again() -> None:
    rec = Recovery("here", max_attempts=4, reconnect_timeout=1.0)
    rec.reconnected([finished(1, ConnectError("x")), finished(0, ConnectError("x"))])
    assert (rec.reconnects, rec.reissued) == (1, 1)
