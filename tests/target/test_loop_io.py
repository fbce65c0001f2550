"""Which backing I/O the target's event loop does itself, and when it stops writing.

Sans-I/O: the requests are built by hand, the backings are in memory or a temp file,
and time is a number the test passes in.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from earmark.scsi.disk import Disk
from earmark.scsi.plans import Plan, ReadPlan, SyncPlan, WritePlan
from earmark.target import loop_io
from earmark.target.backing import FileBacking, MemoryBacking
from earmark.target.events import IoRequest
from earmark.target.loop_io import LoopWrites, run_on_loop
from earmark.target.task import Task
from earmark.target.unit import LogicalUnit

BS = 512
SIZE = 1 << 20


class Recording(MemoryBacking):
    """A memory LUN that says which calls it got."""

    def __init__(self, *, now_ok: bool = True) -> None:
        super().__init__(SIZE)
        self.now_ok = now_ok
        self.calls: list[str] = []

    def write_now(self, offset: int, buffers: list[memoryview]) -> bool:
        self.calls.append("write_now")
        return super().write_now(offset, buffers) if self.now_ok else False

    def read_cached(self, offset: int, buffers: list[memoryview]) -> bool:
        self.calls.append("read_cached")
        return super().read_cached(offset, buffers)


def _zero() -> float:
    return 0.0


def _unit(backing: MemoryBacking) -> LogicalUnit:
    return LogicalUnit(3, Disk(SIZE // BS, "serial", block_size=BS), backing)


def _io(unit: LogicalUnit, plan: Plan, nbytes: int, *, offset: int = 0,
        last: bool = True) -> IoRequest:
    task = Task(1, 1, unit.number, unit, b"", None)
    task.xfer = nbytes
    return IoRequest(task, unit, plan, offset, [memoryview(bytearray(b"w" * nbytes))], last)


def test_small_plain_writes_and_reads_run_on_the_loop() -> None:
    backing = Recording()
    unit = _unit(backing)
    assert run_on_loop(_io(unit, WritePlan(8, 8), 4096), clock=_zero)
    view = memoryview(bytearray(4096))
    backing.readinto(8 * BS, [view])
    assert bytes(view) == b"w" * 4096
    assert run_on_loop(_io(unit, ReadPlan(8, 8), 4096), clock=_zero)
    assert backing.calls == ["write_now", "read_cached"]


@pytest.mark.parametrize("plan, nbytes, offset, last", [
    (WritePlan(0, 8, fua=True), 4096, 0, True),       # FUA (or WCE=0): it syncs, on a thread
    (WritePlan(0, 8, atomic=True), 4096, 0, True),    # takes the unit's lock: never on the loop
    (WritePlan(0, 256), loop_io.INLINE_BYTES * 2, 0, True),   # too big to copy on the loop
    (WritePlan(0, 8), 4096, 4096, True),              # a later window of a reused buffer
    (WritePlan(0, 8), 4096, 0, False),                # not the last window
    (SyncPlan(), 0, 0, True),
], ids=["fua", "atomic", "large", "later-window", "not-last", "sync"])
def test_what_never_runs_on_the_loop(plan: Plan, nbytes: int, offset: int, last: bool) -> None:
    backing = Recording()
    assert not run_on_loop(_io(_unit(backing), plan, nbytes, offset=offset, last=last), clock=_zero)
    assert backing.calls == []


def test_a_refused_or_failing_write_goes_to_the_threads() -> None:
    refusing = Recording(now_ok=False)
    assert not run_on_loop(_io(_unit(refusing), WritePlan(0, 8), 4096), clock=_zero)
    assert refusing.calls == ["write_now"]
    # Outside the LUN: BackingError, which run_io on a thread turns into sense data.
    assert not run_on_loop(_io(_unit(Recording()), WritePlan(SIZE // BS, 8), 4096), clock=_zero)


def test_a_closed_gate_sends_writes_to_the_threads_but_not_reads() -> None:
    backing = Recording()
    unit = _unit(backing)
    unit.loop_writes.closed_until = 10.0
    assert not run_on_loop(_io(unit, WritePlan(0, 8), 4096), clock=lambda: 9.0)
    assert run_on_loop(_io(unit, ReadPlan(0, 8), 4096), clock=lambda: 9.0)
    assert run_on_loop(_io(unit, WritePlan(0, 8), 4096), clock=lambda: 10.0)
    assert backing.calls == ["read_cached", "write_now"]


class Slow(Recording):
    """Every call takes 0.2 s of `clock`: more than a tenth of the gate's window."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 0.0

    def write_now(self, offset: int, buffers: list[memoryview]) -> bool:
        self.clock += 0.2
        return super().write_now(offset, buffers)

    def read_cached(self, offset: int, buffers: list[memoryview]) -> bool:
        self.clock += 0.2
        return super().read_cached(offset, buffers)


def test_the_loop_times_its_writes_not_its_reads() -> None:
    backing = Slow()
    unit = _unit(backing)
    assert run_on_loop(_io(unit, ReadPlan(0, 8), 4096), clock=lambda: backing.clock)
    assert unit.loop_writes.closings == 0  # a read from the page cache waits for no disk
    assert run_on_loop(_io(unit, WritePlan(0, 8), 4096), clock=lambda: backing.clock)
    assert unit.loop_writes.closings == 1  # the write's 0.2 s: writes go to the threads
    assert not run_on_loop(_io(unit, WritePlan(0, 8), 4096), clock=lambda: backing.clock)


def test_quick_writes_and_a_few_slow_ones_keep_the_loop_open() -> None:
    gate = LoopWrites()
    now = 0.0
    for i in range(10_000):
        # A preempted loop: a few milliseconds now and then, far under a tenth of a window.
        gate.took(0.004 if i % 1000 == 0 else 10e-6, now)
        now += 50e-6
    assert gate.open(now) and gate.closings == 0


def test_stalls_past_a_tenth_of_the_window_close_it_then_back_off(
        caplog: pytest.LogCaptureFixture) -> None:
    gate = LoopWrites(7)
    pause = 0.03  # a dirty-throttling pause
    with caplog.at_level(logging.WARNING, logger="earmark.target.loop_io"):
        for n in range(4):
            gate.took(pause, 0.0 + n * 0.01)
    assert gate.closings == 1
    assert not gate.open(0.5) and gate.open(loop_io.FIRST_BACKOFF_SECONDS + 0.03)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["LUN 7"]
    # Still throttled in the window after reopening: closed twice as long.
    start = gate.closed_until
    for n in range(4):
        gate.took(pause, start + n * 0.01)
    assert gate.closings == 2
    assert not gate.open(start + 0.03 + 1.5)
    assert gate.open(start + 0.03 + 2 * loop_io.FIRST_BACKOFF_SECONDS)


def test_a_quiet_window_after_reopening_resets_the_back_off() -> None:
    gate = LoopWrites()
    for n in range(4):
        gate.took(0.03, n * 0.01)
    reopened = gate.closed_until
    assert gate.backoff == 2 * loop_io.FIRST_BACKOFF_SECONDS
    gate.took(10e-6, reopened)
    gate.took(10e-6, reopened + loop_io.WINDOW_SECONDS + 0.001)  # a quiet probation window
    assert gate.backoff == loop_io.FIRST_BACKOFF_SECONDS
    for n in range(4):  # stalls again, inside the new window: closed for the first back-off
        gate.took(0.03, reopened + 1.5 + n * 0.01)
    assert gate.closings == 2
    closed_at = reopened + 1.53
    assert not gate.open(closed_at + 0.9 * loop_io.FIRST_BACKOFF_SECONDS)
    assert gate.open(closed_at + loop_io.FIRST_BACKOFF_SECONDS)


def test_backoff_is_bounded() -> None:
    gate = LoopWrites()
    now = 0.0
    for _ in range(20):
        gate.took(1.0, now)
        now = gate.closed_until
    assert gate.backoff == loop_io.LAST_BACKOFF_SECONDS


def test_file_write_now_asks_the_kernel_not_to_wait_and_stops_asking_when_told_no(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lun.img"
    path.write_bytes(bytes(SIZE))
    backing = FileBacking(path)
    flags_seen: list[int] = []
    real = os.pwritev

    def would_block(fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        flags_seen.append(flags)
        raise BlockingIOError(errno.EAGAIN, "would wait")

    monkeypatch.setattr(os, "pwritev", would_block)
    assert not backing.write_now(0, [memoryview(b"a" * 4096)])
    assert flags_seen == [os.RWF_NOWAIT]

    def unsupported(fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        flags_seen.append(flags)
        if flags:
            raise OSError(errno.EOPNOTSUPP, "no buffered RWF_NOWAIT writes here")
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "pwritev", unsupported)
    # Told no: written plainly this once (the loop times it) and never asked again.
    assert backing.write_now(4096, [memoryview(b"b" * 4096)])
    assert backing.write_now(8192, [memoryview(b"c" * 4096)])
    assert flags_seen == [os.RWF_NOWAIT, os.RWF_NOWAIT, 0, 0]
    backing.close()
    assert path.read_bytes()[:12288] == bytes(4096) + b"b" * 4096 + b"c" * 4096


def test_file_write_now_writes_on_this_kernel(tmp_path: Path) -> None:
    path = tmp_path / "lun.img"
    path.write_bytes(bytes(SIZE))
    backing = FileBacking(path)
    assert backing.write_now(512, [memoryview(b"x" * 1024), memoryview(b"y" * 512)])
    backing.close()
    assert path.read_bytes()[512:2048] == b"x" * 1024 + b"y" * 512
