"""A unit that says it powered on tells every I_T nexus once (POWER ON OCCURRED)."""

from __future__ import annotations

from earmark.scsi.reservations import Nexus
from earmark.scsi.sense import Asc, ScsiError, SenseKey
from earmark.target.backing import MemoryBacking
from earmark.target.build import embedded


def test_each_nexus_hears_the_power_on_once_and_a_unit_that_does_not_say_it_is_silent() -> None:
    (told,) = embedded((MemoryBacking(1 << 20),), power_on=True).targets[0].units.values()
    (silent,) = embedded((MemoryBacking(1 << 20),)).targets[0].units.values()
    first, again, other = object(), object(), object()
    told.join(first, Nexus("iqn.a", 1))
    told.join(other, Nexus("iqn.a", 2))
    error = told.heard(first, Nexus("iqn.a", 1))  # its first command is answered with it
    assert error.key == SenseKey.UNIT_ATTENTION and error.code == Asc.POWER_ON_OCCURRED
    told.join(again, Nexus("iqn.a", 1))  # the same nexus, reinstated on a live target
    assert set(told.attention) == {other}
    silent.join(first, Nexus("iqn.a", 1))
    assert silent.attention == {} and silent.sessions == {first}


def test_a_nexus_whose_session_ended_before_a_command_hears_it_on_the_next() -> None:
    """Swarm seed 8815: the target crashed and restarted, the initiator logged in, and a
    reset ended that session before its first command; the reinstated session heard
    nothing, fsync succeeded, and 141 acknowledged writes the cache had lost went unsaid."""
    (unit,) = embedded((MemoryBacking(1 << 20),), power_on=True).targets[0].units.values()
    nexus = Nexus("iqn.a", 1)
    gone, next_one = object(), object()
    unit.join(gone, nexus)
    unit.sessions.discard(gone)  # the session ends as TargetSession.close does it
    unit.attention.pop(gone, None)
    unit.join(next_one, nexus)
    assert unit.heard(next_one, nexus).code == Asc.POWER_ON_OCCURRED


def test_a_reset_does_not_replace_a_power_on_not_yet_heard() -> None:
    (unit,) = embedded((MemoryBacking(1 << 20),), power_on=True).targets[0].units.values()
    session = object()
    unit.join(session, Nexus("iqn.a", 1))
    unit.tell_all(ScsiError(SenseKey.UNIT_ATTENTION, 0x29, 0x03))  # LOGICAL UNIT RESET
    assert unit.heard(session, Nexus("iqn.a", 1)).code == Asc.POWER_ON_OCCURRED
