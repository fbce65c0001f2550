"""Memory levels (tabled in docs/architecture.md) and the sizes charged for descriptors.

Levels are ordered from the application (0) down to the wire (4). A holder of
level N never waits for level N or deeper: whatever deeper layers will need was
reserved before and travels down with the work. The numbers matter; the names
only make reports readable, so the host and the target each name the same five
depths after what lives there on their side.
"""

from __future__ import annotations

from enum import IntEnum


class HostLevel(IntEnum):
    """Depths on the initiator host, from the application task to receive buffers."""

    APP = 0
    PAGE = 1
    REQUEST = 2
    TASK = 3
    WIRE = 4


class TargetLevel(IntEnum):
    """Depths on the target, from the admitted command down to the socket."""

    ADMIT = 0
    SLOT = 1
    BUFFER = 2
    BACKING = 3
    RECV = 4


#: The page size of the host's page cache.
PAGE_BYTES = 4096

# Descriptors are Python objects whose real footprint depends on the interpreter;
# charging a fixed documented size keeps the accounting deterministic and honest
# about the fact that they do need memory to exist.

#: A block request descriptor (one merged run of pages).
REQUEST_DESCRIPTOR_BYTES = 256
#: An iSCSI task: its command PDU header (48-byte BHS, AHS, header digest).
TASK_DESCRIPTOR_BYTES = 64
#: One Data-Out PDU header (BHS and digest); the data itself is the page.
DATA_OUT_HEADER_BYTES = 64
#: A receive buffer for one response-sized PDU (R2T, SCSI Response header).
RESPONSE_HEADER_BYTES = 64
