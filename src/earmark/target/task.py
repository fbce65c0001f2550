"""One SCSI command in flight on a target session, with its slot and its data window.

A command's data moves through one buffer drawn from the slot it was admitted on,
sized by the smaller of the transfer and the slot's buffer: the buffer covers a
window [start, end) of the transfer, and is reused window after window (burst
after burst for writes, chunk after chunk for Data-In). Under `--policy none` the
buffer instead comes in pieces allocated burst by burst and held to the end.
"""

from __future__ import annotations

from earmark.memory import Buffer, Reservation
from earmark.scsi.plans import Plan
from earmark.target.unit import LogicalUnit


class Sequence:
    """A Data-Out sequence the target expects: unsolicited (TTT ffffffff) or one R2T's."""

    __slots__ = ("end", "next_data_sn", "next_offset", "sent")

    def __init__(self, offset: int, end: int, sent: bool = True) -> None:
        self.next_offset = offset
        self.end = end
        self.next_data_sn = 0
        #: False while an R2T waits for its buffer (`--policy none`): not on the wire yet.
        self.sent = sent


class Task:
    __slots__ = (
        "aborted",
        "cdb",
        "cmd_sn",
        "data_sn",
        "edtl",
        "end",
        "got",
        "in_flight",
        "itt",
        "lun",
        "next_r2t",
        "pieces",
        "plan",
        "r2t_sn",
        "r2ts",
        "reading",
        "released",
        "slot",
        "spdtl",
        "start",
        "stash",
        "unit",
        "unsolicited",
        "xfer",
    )

    def __init__(
        self,
        itt: int,
        cmd_sn: int,
        lun: int,
        unit: LogicalUnit | None,
        cdb: bytes,
        slot: Reservation | None,
    ) -> None:
        self.itt = itt
        self.cmd_sn = cmd_sn
        self.lun = lun
        self.unit = unit
        self.cdb = cdb
        self.slot = slot
        self.plan: Plan | None = None
        self.reading = False
        #: The transport's Expected Data Transfer Length for this command's direction.
        self.edtl = 0
        #: What SCSI says the command moves in that direction (for residuals).
        self.spdtl = 0
        #: Bytes actually moved: min(edtl, spdtl).
        self.xfer = 0
        #: The window of the transfer the buffer now covers, and bytes of it received.
        self.start = 0
        self.end = 0
        self.got = 0
        #: (transfer offset, buffer) pieces holding the window's data.
        self.pieces: list[tuple[int, Buffer]] = []
        self.unsolicited: Sequence | None = None
        self.r2ts: dict[int, Sequence] = {}
        self.next_r2t = 0
        self.r2t_sn = 0
        self.data_sn = 0
        self.in_flight = False
        self.aborted = False
        self.released = False
        #: Immediate data waiting for its buffer (`--policy none`).
        self.stash: memoryview | None = None

    def awaits_wire(self) -> bool:
        """Is Data-Out the initiator was asked for (an R2T on the wire, or unsolicited
        data not all in) still to come? Data for an aborted command is moot."""
        if self.aborted:
            return False
        return self.unsolicited is not None or any(seq.sent for seq in self.r2ts.values())

    @property
    def owner(self) -> str:
        return f"itt-{self.itt:08x}"
