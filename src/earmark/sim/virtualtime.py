"""A virtual-time asyncio loop: the simulator's clock, for the same stack that runs on TCP.

Timers fire in order, instantly: when nothing is ready, the loop jumps its clock
to the next timer instead of sleeping. Its ready queue (:mod:`earmark.sim.schedule`)
picks which ready callback runs next, from a seed, so a run with the same inputs and
seeds is the same run every time — a deadlock found once is found again, in
milliseconds rather than minutes.

Only in-process work may run on it: a real socket would never become ready. So
its ``create_connection`` and ``create_server`` go to its simulated network
(:mod:`earmark.sim.simnet`), and ``run_in_executor`` runs the function at
once on the loop (the target's backing I/O; the result is due after what the
``disk`` model draws), which keeps the run single-threaded and its order fixed.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import selectors
from asyncio import format_helpers
from collections.abc import Awaitable, Callable
from contextvars import Context, copy_context
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

from earmark.sim.links import LinkShape, SimServer, Trace
from earmark.sim.schedule import ReadyQueue
from earmark.sim.simnet import SimNetwork, SimTransport

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


_HANDLE, _TIMER = asyncio.Handle, asyncio.TimerHandle
#: asyncio's own thresholds (base_events): more timers than this, more than this share
#: of them cancelled, and they are all dropped at once; the longest a loop step waits.
_MANY_TIMERS, _CANCELLED_SHARE, _LONGEST_WAIT = 100, 0.5, 24 * 3600.0


def _failed(handle: Any, exc: BaseException) -> None:
    """What asyncio's ``Handle._run`` does with an exception its callback raised: the
    loop's exception handler hears of it, with the callback named."""
    cb = format_helpers._format_callback_source(handle._callback, handle._args)
    context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


class StalledError(RuntimeError):
    """Nothing is ready and no timer is set: the simulated system can never move again."""


class _JumpingSelector(selectors.DefaultSelector):
    """Instead of blocking for `timeout`, advance the loop's clock by it. With nothing
    registered (the simulator's own transports have no file descriptors) it does not
    ask the kernel: a system call every loop step was a tenth of a run's time."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None
        self._registered = 0  # kept here: asking get_map() costs two calls a loop step

    def register(self, fileobj: FileDescriptorLike, events: int,
                 data: Any = None) -> selectors.SelectorKey:
        key = super().register(fileobj, events, data)
        self._registered += 1
        return key

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        key = super().unregister(fileobj)
        self._registered -= 1
        return key

    def select(
        self, timeout: float | None = None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0) if self._registered else []
        if ready or timeout == 0 or self.loop is None:
            return ready
        if timeout is None:
            raise StalledError("no task can run and no timer is set: the simulation is stuck")
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, *, ready: ReadyQueue | None = None, trace: Trace | None = None,
                 disk: Callable[[], float] | None = None, **shape: Any) -> None:  # LinkShape
        selector = self._jumping = _JumpingSelector()
        #: The timers: a heap of (when, handle) (see `_scheduled`).
        self._timers: list[tuple[float, Any]] = []
        super().__init__(selector)
        selector.loop = self
        self._now = 0.0
        self._ready = ReadyQueue() if ready is None else ready
        #: Callbacks taken from the ready queue so far (cancelled ones too): the loop
        #: events, counted here once a step rather than by a hook on every one.
        self.events = 0
        self.disk = disk
        self.network = SimNetwork(self, LinkShape(**shape), Trace() if trace is None else trace)

    async def create_connection(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str | None = None,
        port: int | None = None, **_: Any,
    ) -> tuple[SimTransport, asyncio.BaseProtocol]:
        return await self.network.connect(protocol_factory, host or "127.0.0.1", port or 0)

    async def create_server(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str | None = None,
        port: int | None = None, **_: Any,
    ) -> SimServer:
        return self.network.listen(host or "127.0.0.1", port or 0, protocol_factory)

    def call_soon(
        self, callback: Callable[[*Ts], object], *args: *Ts,
        context: Context | None = None,
    ) -> asyncio.Handle:
        """asyncio's, without two calls and two checks that only matter in debug mode or
        on a closed loop (where asyncio's own runs): every task step comes through here."""
        if self._debug or self._closed:  # type: ignore[attr-defined]
            return super().call_soon(callback, *args, context=context)
        # The handle as asyncio's __init__ makes one outside debug mode (no source
        # traceback), without calling it: its frame and its get_debug call were a good part
        # of every task step's cost, and a function of ours making it was still a frame.
        # call_at makes its timers the same way.
        handle = _HANDLE.__new__(_HANDLE)
        fields: Any = handle  # asyncio's private ones
        fields._context = copy_context() if context is None else context
        fields._loop = self
        fields._callback = callback
        fields._args = args
        fields._cancelled = False
        fields._repr = None
        fields._source_traceback = None
        self._ready.append(handle)
        return handle

    def call_at(
        self, when: float, callback: Callable[[*Ts], object], *args: *Ts,
        context: Context | None = None,
    ) -> asyncio.TimerHandle:
        """asyncio's, likewise: every delivery and window update on a link is a timer.
        In debug mode or on a closed loop, asyncio's checks and its handle, as its own
        ``call_at`` makes them."""
        me: Any = self
        fields: Any
        if me._debug or me._closed:
            if when is None:
                raise TypeError("when cannot be None")
            me._check_closed()
            if me._debug:
                me._check_thread()
                me._check_callback(callback, "call_at")
            timer = asyncio.TimerHandle(when, callback, args, self, context)
            fields = timer
            if fields._source_traceback:
                del fields._source_traceback[-1]
        else:
            timer = _TIMER.__new__(_TIMER)  # as call_soon makes its handle, and the time
            fields = timer
            fields._context = copy_context() if context is None else context
            fields._loop = self
            fields._callback = callback
            fields._args = args
            fields._cancelled = False
            fields._repr = None
            fields._source_traceback = None
            fields._when = when
        heapq.heappush(self._timers, (when, timer))
        fields._scheduled = True
        return timer

    @property
    def _scheduled(self) -> list[asyncio.TimerHandle]:
        """asyncio's heap of timers, as its code and the tests read it: the handles.

        The loop keeps them in `_timers` as (when, handle) pairs, so the heap compares
        floats in C rather than calling ``TimerHandle.__lt__`` in Python, several times
        for every timer (a tenth of a delivery's cost). The order is the same, ties too:
        a pair is less than another exactly when its handle is (equal times compare
        the handles, neither of which is less)."""
        return [timer for _, timer in self._timers]

    @_scheduled.setter
    def _scheduled(self, timers: list[asyncio.TimerHandle]) -> None:
        """What asyncio's ``__init__`` sets (an empty heap)."""
        self._timers = [(timer.when(), timer) for timer in timers]
        heapq.heapify(self._timers)

    def close(self) -> None:
        """asyncio's, which clears `_scheduled`: here that is a copy, so `_timers` too."""
        super().close()
        if self.is_closed():
            self._timers.clear()

    def _run_once(self) -> None:
        """asyncio's one iteration, its steps in its order (cancelled timers at the head of
        the heap dropped, the clock moved to the next timer when nothing is ready, the
        timers due moved behind what is ready, then as many callbacks run as were ready),
        without what a loop that never blocks does not need: the clock is read from its
        field, not through two calls of `time`, and the selector is asked only when it
        has a file or nothing can ever run. Every loop event passes here. (Debug mode
        loses nothing: asyncio's warning about slow callbacks cannot fire where no time
        passes in a callback, and the handle running is still named while it runs.)
        Iterations follow one another here until the loop is told to stop, as asyncio's
        ``run_forever`` would call this again: not a call per iteration."""
        me: Any = self  # asyncio's private fields, which its stubs do not all declare
        ready, selector = self._ready, self._jumping
        popleft = ready.popleft
        while True:
            scheduled = self._timers
            if scheduled and (scheduled[0][1]._cancelled or len(scheduled) > _MANY_TIMERS):
                self._drop_cancelled()
                scheduled = self._timers
            timeout: float | None = None
            if ready or me._stopping:
                timeout = 0
            elif scheduled:
                timeout = min(max(0.0, scheduled[0][0] - self._now), _LONGEST_WAIT)
            if selector._registered or timeout is None:
                me._process_events(selector.select(timeout))
            elif timeout:
                self._now += timeout
            end = self._now + me._clock_resolution
            while scheduled and scheduled[0][0] < end:
                timer = heapq.heappop(scheduled)[1]
                timer._scheduled = False
                ready.append(timer)
            ntodo = len(ready)
            self.events += ntodo
            if me._debug:
                for _ in range(ntodo):
                    handle = popleft()
                    if not handle._cancelled:
                        me._current_handle = handle
                        try:
                            handle._run()
                        finally:
                            me._current_handle = None
            else:
                for _ in range(ntodo):
                    handle = popleft()
                    if not handle._cancelled:
                        # What `handle._run()` does, without its frame (one per loop event).
                        try:
                            handle._context.run(handle._callback, *handle._args)
                        except (SystemExit, KeyboardInterrupt):
                            raise
                        except BaseException as exc:
                            _failed(handle, exc)
            if me._stopping:  # what asyncio's run_forever looks at after each iteration
                return

    def _drop_cancelled(self) -> None:
        """asyncio's clean-up of cancelled timers: all of them when they are more than half
        of many, else those at the head of the heap."""
        me: Any = self
        scheduled = self._timers
        if len(scheduled) > _MANY_TIMERS and (
                me._timer_cancelled_count / len(scheduled) > _CANCELLED_SHARE):
            kept = []
            for entry in scheduled:
                if entry[1]._cancelled:
                    entry[1]._scheduled = False
                else:
                    kept.append(entry)
            heapq.heapify(kept)
            self._timers = kept
            me._timer_cancelled_count = 0
            return
        while scheduled and scheduled[0][1]._cancelled:
            me._timer_cancelled_count -= 1
            heapq.heappop(scheduled)[1]._scheduled = False

    def run_in_executor(  # type: ignore[override]
        self, executor: object, func: Callable[..., T], *args: Any,
    ) -> asyncio.Future[T]:
        done: asyncio.Future[T] = self.create_future()
        try:
            settle = functools.partial(done.set_result, func(*args))
        except Exception as exc:
            settle = functools.partial(done.set_exception, exc)
        self.call_later(self.disk(), lambda: done.done() or settle()) if self.disk else settle()
        return done

    def _make_self_pipe(self) -> None:
        """No self-pipe: it only wakes a loop blocked in the kernel, and this one never
        blocks there (a call_soon_threadsafe's callback is in the ready queue, which
        the loop looks at on its next step)."""

    def _close_self_pipe(self) -> None:
        pass

    def _write_to_self(self) -> None:
        """Nothing to wake (no self-pipe): what `call_soon_threadsafe` (and `set_debug` on
        the running loop) would write to it."""

    def time(self) -> float:
        return self._now

    def stopwatch(self) -> float:
        """What `loops.stopwatch` times the loop's own work with: no time passes in a call."""
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds


def run_virtual(main: Callable[[], Awaitable[T]], **loop_options: Any) -> T:
    """asyncio.run on virtual time (``loop_options``: :class:`VirtualTimeLoop`'s)."""
    loop = VirtualTimeLoop(**loop_options)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
