"""How a device recovers at ERL 0, decided once for both engines (no clock: time is passed in).

A command past its timeout is aborted (ABORT TASK, in the session) and, once the
target confirms, sent again on the same session. A lost connection (reset, an
abort the target does not answer, a target that breaks the protocol) is
recovered by logging in again with the same ISID and TSIH 0 (session
reinstatement: the target drops the old session and its tasks) and issuing
every unanswered command again in CmdSN order. A write is acknowledged only by
its GOOD status, so an acknowledged write is never sent again and an
unacknowledged one is only ever repeated whole (WRITE is idempotent).

What an engine does is move bytes and keep time; what it does next is asked
here: send a finished command again (:meth:`Recovery.send_again`), give a
command up after a lost connection and with which error
(:meth:`Recovery.give_up`), when to try logging in again and when to stop
(:class:`Backoff`).
"""

from __future__ import annotations

from collections.abc import Iterable

from earmark.initiator.durability import Durability
from earmark.initiator.errors import (
    CommandAbortedError,
    CommandTimeoutError,
    SessionLostError,
)
from earmark.initiator.failure import ConnectionFailed, FailureKind
from earmark.initiator.session import Command
from earmark.scsi.sense import ScsiError, SenseKey

__all__ = ["Backoff", "Recovery"]

_UA_RETRIES = 3
"""UNIT ATTENTIONs a command may meet beyond its attempts (one per new I_T nexus)."""
_FIRST_DELAY = 0.05
_MAX_DELAY = 1.0


class Backoff:
    """The login attempts after a lost connection: tried again, at growing intervals,
    until ``timeout`` has passed since the loss.

    While a target restarts it may listen before its targets exist (NOT FOUND) or
    refuse for a moment, so every failed attempt is retried until the deadline.
    """

    __slots__ = ("_deadline", "_delay", "last", "timeout")

    def __init__(self, now: float, timeout: float) -> None:
        self.timeout = timeout
        self._deadline = now + timeout
        self._delay = _FIRST_DELAY
        #: Why the last attempt failed.
        self.last: Exception | None = None

    def may_try(self, now: float) -> bool:
        """Whether to attempt a login now (False: give up, :meth:`gave_up`)."""
        return now < self._deadline

    def failed(self, exc: Exception, now: float) -> float:
        """An attempt failed with ``exc``: seconds to wait before the next."""
        self.last = exc
        delay = min(self._delay, max(0.0, self._deadline - now))
        self._delay = min(self._delay * 2, _MAX_DELAY)
        return delay

    def gave_up(self, where: str, failure: ConnectionFailed) -> SessionLostError:
        """The error every command still waiting gets, and every later one."""
        return SessionLostError(
            f"{where}: connection lost ({failure.reason}) and not re-established in "
            f"{self.timeout:g} s: {self.last}")


class Recovery:
    """A device's recovery rules and what they did (its counters)."""

    def __init__(self, where: str, max_attempts: int, reconnect_timeout: float) -> None:
        self.where = where
        self.max_attempts = max_attempts
        self.reconnect_timeout = reconnect_timeout
        #: Sessions re-established, commands issued again (on a new session or after
        #: an abort), and commands aborted after a timeout.
        self.reconnects = 0
        self.reissued = 0
        self.aborts = 0
        #: Which acknowledged writes a flush may vouch for (a target that powered on).
        self.durability = Durability()

    def send_again(self, cmd: Command) -> bool:
        """Whether a finished command is to be sent again on the same session, its error
        cleared if so: a new I_T nexus (first login, reinstatement) reports UNIT
        ATTENTION once and the command itself was not run; a command that timed out and
        that the target aborted (ABORT TASK) goes again while it has attempts left."""
        error = cmd.error
        if isinstance(error, ScsiError):
            self.durability.attention(error)
            again = (error.key == SenseKey.UNIT_ATTENTION
                     and cmd.attempts < self.max_attempts + _UA_RETRIES)
        else:
            again = isinstance(error, CommandAbortedError) and cmd.attempts < self.max_attempts
            if again:
                self.aborts += 1
                self.reissued += 1
        if again:
            cmd.error = None
            cmd.status = None
        return again

    def give_up(self, cmd: Command, failure: ConnectionFailed) -> SessionLostError | None:
        """A command unanswered when its connection failed: the error it ends with once
        it has no attempts left (a timeout if the failure was one), else None: it goes
        again on the next session."""
        if cmd.attempts < self.max_attempts:
            return None
        cls = CommandTimeoutError if failure.kind is FailureKind.TIMEOUT else SessionLostError
        return cls(f"{self.where}: command not done after {cmd.attempts} attempts: "
                   f"{failure.reason}")

    def lost_error(self, failure: ConnectionFailed) -> SessionLostError:
        """The error of commands whose connection failed while the device closes."""
        return SessionLostError(f"{self.where}: {failure.reason}")

    def backoff(self, now: float) -> Backoff:
        """The schedule of login attempts after a connection failed at ``now``."""
        return Backoff(now, self.reconnect_timeout)

    def reconnected(self, commands: Iterable[Command]) -> None:
        """A new session is up and ``commands`` go out on it (those sent before count as
        issued again)."""
        self.reconnects += 1
        self.reissued += sum(cmd.attempts > 0 for cmd in commands)
