"""What a logical unit is, as the SBC command set sees it: geometry, identity, features.

Everything INQUIRY, READ CAPACITY and MODE SENSE report is derived from one frozen
Disk, so the pages cannot disagree with each other or with what the commands do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import IntFlag

VENDOR = "EARMARK"


class Need(IntFlag):
    """What a command may need of a unit; `Disk.lacks` says which of them it lacks."""

    THIN = 1
    ATOMIC = 2
    #: The medium, for any command but those a unit answers during a sanitize or
    #: without its medium.
    MEDIUM = 4
    #: A removable medium (PREVENT ALLOW MEDIUM REMOVAL).
    REMOVABLE = 8


@dataclass(slots=True, frozen=True)
class Disk:
    """A direct-access logical unit.

    The limits are what the target promises in the BLOCK LIMITS VPD page and then
    enforces: the target reserves buffers before it admits a command, so it must
    bound what one command can move (max_transfer_bytes) and how much an UNMAP
    parameter list can hold (max_unmap_descriptors).
    """

    num_blocks: int
    serial: str
    block_size: int = 512
    product: str = "EARMARK DISK"
    revision: str = "0001"
    thin_provisioning: bool = True
    write_cache: bool = True
    read_only: bool = False
    max_transfer_bytes: int = 8 << 20
    max_write_same_blocks: int = 1 << 16
    max_unmap_blocks: int = 1 << 20
    max_unmap_descriptors: int = 256
    max_compare_blocks: int = 255
    #: WRITE ATOMIC (16) limit; 0: not offered. A target sets it only to what one
    #: command buffer holds, since atomicity rests on writing all of it at once.
    max_atomic_blocks: int = 0
    #: Read-only by MODE SELECT (the control page's SWP), not by configuration: a unit
    #: has both set then, and clearing SWP makes it writable again (`mode_select`).
    soft_write_protect: bool = False
    #: A SANITIZE is at work on the medium: every command that touches it, or the
    #: unit's state, answers NOT READY until it ends (SBC-4 4.11.2).
    sanitizing: bool = False
    #: The medium can be ejected and loaded (START STOP UNIT with LOEJ): INQUIRY says
    #: RMB. `ejected`: it is out, and commands that need it answer MEDIUM NOT PRESENT.
    removable: bool = False
    ejected: bool = False
    lacks: int = field(init=False, repr=False, compare=False)
    #: max_transfer_bytes in blocks, worked out once: every read and write checks it.
    max_transfer_blocks: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.block_size not in (512, 4096):
            raise ValueError(f"block size {self.block_size} is neither 512 nor 4096")
        if self.num_blocks < 1:
            raise ValueError(f"a disk needs at least one block, not {self.num_blocks}")
        if not self.serial or not self.serial.isascii() or not self.serial.isprintable():
            raise ValueError(f"serial {self.serial!r} must be non-empty printable ASCII")
        if len(self.product) > 16 or len(self.revision) > 4:
            raise ValueError("product is at most 16 characters and revision at most 4")
        object.__setattr__(self, "max_transfer_blocks",
                           self.max_transfer_bytes // self.block_size)
        if self.max_transfer_bytes < self.block_size:
            raise ValueError("max_transfer_bytes must hold at least one block")
        if not 0 <= self.max_atomic_blocks <= self.max_transfer_blocks:
            raise ValueError("max_atomic_blocks must be between 0 and max_transfer_blocks")
        lacks = ((0 if self.thin_provisioning else Need.THIN)
                 | (0 if self.max_atomic_blocks else Need.ATOMIC)
                 | (Need.MEDIUM if self.sanitizing or self.ejected else 0)
                 | (0 if self.removable else Need.REMOVABLE))
        object.__setattr__(self, "lacks", int(lacks))

    @property
    def naa(self) -> bytes:
        """NAA 3h (locally assigned) 8-byte designator: 60 bits of SHA-256 of the serial.

        Locally assigned because earmark owns no IEEE company ID; it is stable for a
        given serial, which is what multipath and udev need from it.
        """
        digest = int.from_bytes(hashlib.sha256(self.serial.encode()).digest()[:8], "big")
        return ((0x3 << 60) | (digest & ((1 << 60) - 1))).to_bytes(8, "big")
