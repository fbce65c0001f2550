"""A logical unit as the target serves it: what SCSI sees (Disk) and where the data lives."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from earmark.scsi.disk import Disk
from earmark.scsi.reservations import Reservations
from earmark.scsi.sense import ScsiError
from earmark.scsi.xcopy import CopyManager
from earmark.target.backing import Backing
from earmark.target.counters import UnitCounters
from earmark.target.loop_io import LoopWrites


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

    def tell_all(self, error: ScsiError) -> None:
        """A unit attention for every session on the LUN (a reset, a new capacity)."""
        for session in self.sessions:
            self.attention[session] = error

    def __post_init__(self) -> None:
        self.loop_writes = LoopWrites(self.number)
