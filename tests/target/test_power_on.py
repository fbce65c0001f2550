"""A unit that says it powered on tells every I_T nexus once (POWER ON OCCURRED)."""

from __future__ import annotations

from earmark.scsi.reservations import Nexus
from earmark.scsi.sense import Asc, SenseKey
from earmark.target.backing import MemoryBacking
from earmark.target.build import embedded


def test_each_nexus_hears_the_power_on_once_and_a_unit_that_does_not_say_it_is_silent() -> None:
    (told,) = embedded((MemoryBacking(1 << 20),), power_on=True).targets[0].units.values()
    (silent,) = embedded((MemoryBacking(1 << 20),)).targets[0].units.values()
    first, again, other = object(), object(), object()
    told.join(first, Nexus("iqn.a", 1))
    told.join(again, Nexus("iqn.a", 1))  # the same nexus, reinstated on a live target
    told.join(other, Nexus("iqn.a", 2))
    assert set(told.attention) == {first, other}
    error = told.attention[first]
    assert error.key == SenseKey.UNIT_ATTENTION and error.code == Asc.POWER_ON_OCCURRED
    silent.join(first, Nexus("iqn.a", 1))
    assert silent.attention == {} and silent.sessions == {first}
