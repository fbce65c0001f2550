"""What both engines do around a session's life, decided once, without I/O.

An engine opens a connection, runs the login (:meth:`Driver.login_steps`) and
hands the result over (:meth:`Driver.attach`); from then on the driver is the
stream's sink: the parser's PDUs go in, what the session has to send goes out
on the stream, finished commands go to :meth:`Driver.deliver` (the engine's
only say: wake whoever waits). Which finished command goes again, which
unanswered one waits for the next session and which fails when a connection
is lost (:meth:`Driver.lost`), what goes out on the next session
(:meth:`Driver.resume`), the session's timers (:meth:`Driver.timer`: the next
moment to wake) and the close, as steps (:attr:`Driver.idle`,
:meth:`Driver.log_out`, :attr:`Driver.logged_out`, :meth:`Driver.shut`), are
decided here.

Time comes in as ``now`` where the engine calls, and as ``clock``, the
engine's own (its loop's time, or the monotonic clock), where the parser calls
(each PDU is stamped as it arrives); the driver never waits or sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar, Unpack

from earmark.host.policy import Policy
from earmark.initiator.device import DeviceBase, DeviceOptions
from earmark.initiator.errors import InitiatorError, SessionLostError
from earmark.initiator.failure import ConnectionFailed, FailureKind
from earmark.initiator.login import LoginSteps
from earmark.initiator.recovery import Backoff
from earmark.initiator.session import Command, InitiatorSession
from earmark.initiator.url import IscsiUrl
from earmark.iscsi.pdu import Pdu, WireBytes

__all__ = ["LOGOUT_WAIT", "Driver", "Wire"]

LOGOUT_WAIT = 5.0
"""How long a close waits for the logout response (then it closes the connection anyway)."""


class Wire(Protocol):
    """What the driver needs of a connection (the engines' PduStream)."""

    @property
    def failed(self) -> str | None: ...

    def write(self, pieces: list[WireBytes]) -> None: ...

    def abort(self, reason: str, kind: FailureKind) -> None: ...


S = TypeVar("S", bound=Wire)


class Driver(DeviceBase, Generic[S]):
    """A device's session, its commands without one, and what happens to them."""

    #: The engine's clock, set before the first login.
    clock: Callable[[], float]

    def __init__(self, url: str | IscsiUrl, *, policy: Policy = Policy.RESERVE,
                 **options: Unpack[DeviceOptions]) -> None:
        super().__init__(url, policy=policy, **options)
        self.session: InitiatorSession | None = None
        self.stream: S | None = None
        #: Commands with no session to go on: they go out on the next one.
        self.pending: list[Command] = []
        #: Why the last connection was lost.
        self.failure: ConnectionFailed | None = None
        #: The error every command gets once the session cannot be re-established.
        self.dead: InitiatorError | None = None
        #: The device is closing: no new session, a lost one fails its commands.
        self.closing = False

    # ------------------------------------------------------------ hooks

    def deliver(self, done: list[Command]) -> None:
        """Commands finished (``status`` or ``error`` set): wake whoever waits."""

    def dropped(self, cmd: Command) -> None:
        """``cmd`` goes again: what its last run received is no longer wanted."""

    def logged_out_now(self) -> None:
        """The logout response came."""

    # ------------------------------------------------------------ a session

    def attach(self, steps: LoginSteps, stream: S) -> InitiatorSession:
        """The login is done on ``stream`` (framed for the full feature phase already):
        its limits for the commands' claims, and the session."""
        self.admission.negotiated(steps.login.params)
        session = self.session = steps.session(self.clock(), self.timeouts)
        self.stream = stream
        return session

    def unanswered(self) -> list[Command]:
        """Every command waiting for the target: sent, queued, or for a session."""
        session = self.session
        return self.pending if session is None else [*session.unanswered(), *self.pending]

    # ------------------------------------------------------------ the stream's sink

    def placement(self, bhs: memoryview) -> memoryview | None:
        session = self.session
        return session.placement(bhs) if session is not None else None

    def pdu_received(self, pdu: Pdu, placed: bool) -> None:
        session = self.session
        assert session is not None
        session.receive(pdu, self.clock(), placed)

    def answer_received(self, header: memoryview, at: int, data: memoryview) -> None:
        session = self.session
        assert session is not None
        session.answer(header, at, data, self.clock())

    def batch_done(self) -> None:
        """A batch of PDUs is parsed: commands finish or go again, the session's
        answers go out, and a session that failed aborts its connection."""
        session, stream = self.session, self.stream
        if session is None or stream is None:
            return
        if session.completed:
            done = session.take_completed()
            retry = None
            writes = 0
            for cmd in done:
                if cmd.error is None:
                    writes += cmd.write_data is not None
                elif self.send_again(cmd):
                    retry = retry or []
                    retry.append(cmd)
            self.durability.acked += writes
            if retry:
                now = self.clock()
                for cmd in retry:
                    done.remove(cmd)
                    self.dropped(cmd)
                    session.submit(cmd, now)
            self.deliver(done)
        if session.logout_response is not None:
            self.logged_out_now()
        out = session.data_to_send()
        if out:  # most batches answer nothing: no call to write none
            stream.write(out)
        failure = session.failure
        if failure is not None:
            stream.abort(failure.reason, failure.kind)

    def timer(self, now: float) -> float | None:
        """The session's timers at ``now`` (what they send goes out, a connection they
        condemn is aborted); the next moment to wake, None for none."""
        session, stream = self.session, self.stream
        if session is None or stream is None:
            return None
        session.handle_timer(now)
        stream.write(session.data_to_send())
        failure = session.failure
        if failure is not None:
            stream.abort(failure.reason, failure.kind)
            return None
        return session.get_timer()

    # ------------------------------------------------------------ recovery

    def lost(self, failure: ConnectionFailed) -> bool:
        """The connection is gone: its unanswered commands wait for the next session,
        those out of attempts (every one, while closing) fail. True: log in again."""
        session = self.session
        self.session = self.stream = None
        self.failure = failure
        if session is not None:
            abandoned = session.abandon()
            for cmd in abandoned:
                self.dropped(cmd)
            self.pending[:0] = abandoned
        if self.closing:
            self.fail_pending(self.lost_error(failure))
            return False
        keep: list[Command] = []
        failed: list[Command] = []
        for cmd in self.pending:
            error = self.give_up(cmd, failure)
            if error is None:
                keep.append(cmd)
            else:
                cmd.error = error
                failed.append(cmd)
        self.pending = keep
        if failed:
            self.deliver(failed)
        return True

    def resume(self) -> None:
        """A new session is up after a loss: every command waiting goes out on it."""
        session, stream = self.session, self.stream
        assert session is not None and stream is not None
        pending, self.pending = self.pending, []
        self.reconnected(pending)
        now = self.clock()
        for cmd in pending:
            session.submit(cmd, now)
        stream.write(session.data_to_send())

    def unreachable(self, backoff: Backoff) -> None:
        """The reconnect attempts ran out: this and every later command fails."""
        assert self.failure is not None
        self.dead = backoff.gave_up(self.where, self.failure)
        self.fail_pending(self.dead)

    def fail_pending(self, error: InitiatorError) -> None:
        pending, self.pending = self.pending, []
        for cmd in pending:
            cmd.error = error
        if pending:
            self.deliver(pending)

    # ------------------------------------------------------------ closing

    @property
    def idle(self) -> bool:
        """No command waits for an answer: the logout may go."""
        session = self.session
        return not self.pending and (session is None
                                     or not (session.outstanding or session.queued))

    def log_out(self) -> bool:
        """The close begins: no new session from now on; the logout goes out if there
        is a session to log out of (True: wait for :attr:`logged_out`, or the end)."""
        self.closing = True
        session, stream = self.session, self.stream
        if session is None or stream is None or stream.failed is not None:
            return False
        session.logout()
        stream.write(session.data_to_send())
        return True

    @property
    def logged_out(self) -> bool:
        session = self.session
        return session is None or session.logout_response is not None

    def shut(self) -> None:
        """The close ends, the connection closed: commands still waiting fail, the memory
        goes back."""
        self.closing = True
        self.session = self.stream = None
        self.fail_pending(self.dead or SessionLostError(f"{self.where}: device closed"))
        self.admission.stop()
        self.admission.free_receive_buffer()
