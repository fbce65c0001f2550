"""A logical unit as the target serves it: what SCSI sees (Disk) and where the data lives."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from earmark.scsi.disk import Disk
from earmark.scsi.reservations import Reservations
from earmark.scsi.sense import ScsiError, SenseKey
from earmark.scsi.xcopy import CopyManager
from earmark.target.backing import Backing
from earmark.target.counters import UnitCounters
from earmark.target.loop_io import LoopWrites

#: POWER ON OCCURRED (SAM-5 6.3.2): the unit attention a restart owes every I_T nexus.
_POWER_ON = ScsiError(SenseKey.UNIT_ATTENTION, 0x29, 0x01)


@dataclass(slots=True, eq=False)
class LogicalUnit:
    """One LUN. `atomic` serialises the read-modify-write plans (COMPARE AND WRITE,
    ORWRITE) against each other, since they run on a thread pool. `reservations`
    is shared by every session on the unit: fencing is between initiators, and so is
    `copies`, the EXTENDED COPY lists each nexus started through this unit.
    `loop_writes` is shared too: dirty-page throttling is the backing device's. So is
    `out_of_space`: its backing said ENOSPC and no write has succeeded since (the
    target logs the start and the end of that, not every failed write)."""

    number: int
    disk: Disk
    backing: Backing
    atomic: threading.Lock = field(default_factory=threading.Lock)
    reservations: Reservations = field(default_factory=Reservations)
    copies: CopyManager = field(default_factory=CopyManager)
    loop_writes: LoopWrites = field(init=False)
    out_of_space: bool = False
    counters: UnitCounters = field(default_factory=UnitCounters)
    #: The sessions open on the LUN, and the unit attention each is yet to hear on its
    #: next command (SAM-5 5.14): the latest only, which is all a reset or a resize needs.
    sessions: set[object] = field(default_factory=set)
    attention: dict[object, ScsiError] = field(default_factory=dict)
    #: The I_T nexuses told that the unit powered on (POWER ON OCCURRED, once each, SAM-5
    #: 6.3.2): an initiator learns that the writes a restart's volatile cache held may be
    #: gone. None: a unit that does not say it (its data outlives the process).
    powered_on: set[object] | None = None

    def join(self, session: object, nexus: object) -> None:
        """A session opens on the LUN: if its nexus has not heard of the power on yet, its
        next command does. Not yet heard: a session that ends before it sends one (a
        reset right after the restart) leaves the nexus to hear it on the next session,
        or the initiator would never learn that its unflushed writes may be gone."""
        self.sessions.add(session)
        told = self.powered_on
        if told is not None and nexus not in told:
            self.attention[session] = _POWER_ON

    def heard(self, session: object, nexus: object) -> ScsiError:
        """The unit attention `session`'s command is answered with, now delivered."""
        error = self.attention.pop(session)
        if error is _POWER_ON and self.powered_on is not None:
            self.powered_on.add(nexus)
        return error

    def tell_all(self, error: ScsiError) -> None:
        """A unit attention for every session on the LUN (a reset, a new capacity)."""
        for session in self.sessions:
            if self.attention.get(session) is not _POWER_ON:  # which says it all already
                self.attention[session] = error

    def __post_init__(self) -> None:
        self.loop_writes = LoopWrites(self.number)
