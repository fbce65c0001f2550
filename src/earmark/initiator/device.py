"""What a block device of either engine (asyncio, blocking) is given and keeps.

Which LUN, who it logs in as and with which keys, how long it waits, its
memory and its admission, its recovery counters, its geometry, and the plan of
each block call (the range checked, split into commands, their CDBs); the
engines add only how bytes move.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import TypedDict

from earmark.host.policy import Policy
from earmark.initiator.admission import Admission
from earmark.initiator.login import LoginSteps
from earmark.initiator.recovery import Recovery
from earmark.initiator.session import Timeouts
from earmark.initiator.url import IscsiUrl, parse_url
from earmark.iscsi.login import InitiatorLogin
from earmark.iscsi.negotiation import SessionParams
from earmark.iscsi.stream import receive_buffer_bytes
from earmark.memory.arena import Arena
from earmark.scsi import cdb as C

__all__ = [
    "DEFAULT_ARENA_BYTES",
    "DEFAULT_INITIATOR_NAME",
    "MAX_IO_BYTES",
    "RECEIVE_BUFFER_BYTES",
    "WANTS",
    "DeviceBase",
    "DeviceOptions",
    "Plan",
    "check_extent",
    "chunks",
    "new_isid",
    "policy_named",
    "unmap_command",
    "wants",
]

DEFAULT_INITIATOR_NAME = "iqn.2024-01.org.earmark:initiator"
DEFAULT_ARENA_BYTES = 16 << 20
MAX_IO_BYTES = 1 << 20
"""Largest single command; bigger requests are split and issued together."""

Plan = list[tuple[bytes, memoryview]]
"""The commands of one block call: each one's CDB and the piece of the caller's buffer it
moves, in order."""

WANTS: Mapping[str, str] = {
    "MaxRecvDataSegmentLength": "262144",
    "MaxBurstLength": "16776192",
    "FirstBurstLength": "262144",
    "InitialR2T": "No",
    "ImmediateData": "Yes",
}
"""What libiscsi asks for too: large segments so a 1 MiB read is a handful of PDUs,
and immediate plus unsolicited data so a small write is one round trip."""

RECEIVE_BUFFER_BYTES = receive_buffer_bytes(int(WANTS["MaxRecvDataSegmentLength"]), pdus=2)
"""A connection's receive buffer: room for two of the largest PDUs we accept, so a whole
one still fits behind a partial one without compacting on every read."""


def wants(digests: bool) -> dict[str, str]:
    """The keys to offer at login; ``digests`` asks for CRC32C (the target may refuse)."""
    extra = {"HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None"} if digests else {}
    return {**WANTS, **extra}


def new_isid() -> int:
    """A random-format ISID (T=10b, RFC 7143 §11.12.5): unique per device object, kept
    across reconnects so the target reinstates the session instead of adding one."""
    return (0x80 << 40) | secrets.randbits(40)


def policy_named(policy: Policy | str) -> Policy:
    """A :class:`Policy` or its name; an unknown one is a ValueError listing them."""
    try:
        return Policy(policy)
    except ValueError:
        raise ValueError(f"unknown policy {policy!r}; choose from "
                         f"{', '.join(p.value for p in Policy)}") from None


def check_extent(offset: int, length: int, block_size: int, size: int) -> None:
    """Raise, in words, unless [offset, offset + length) is whole blocks inside the device."""
    if offset % block_size or length % block_size or offset < 0:
        raise ValueError(f"offset {offset} and length {length} must be multiples of the "
                         f"{block_size} B block size")
    if offset + length > size:
        raise ValueError(f"{length} B at offset {offset} run past the end of the "
                         f"{size} B device")


def unmap_command(offset: int, length: int, block_size: int) -> tuple[bytes, memoryview]:
    """UNMAP's CDB and parameter list for a byte range already checked (whole blocks)."""
    extents = []
    lba, left = offset // block_size, length // block_size
    while left:
        n = min(left, 0xFFFFFFFF)
        extents.append((lba, n))
        lba += n
        left -= n
    params = C.unmap_parameter_list(extents)
    return C.unmap(len(params)), memoryview(params)


def chunks(view: memoryview) -> list[tuple[int, memoryview]]:
    """A request larger than one command, as (offset, piece) commands of MAX_IO_BYTES."""
    return [(at, view[at : at + MAX_IO_BYTES]) for at in range(0, len(view), MAX_IO_BYTES)]


class DeviceOptions(TypedDict, total=False):
    """The options both engines take beside the URL; :class:`DeviceBase` says what each
    means and its default."""

    arena: Arena | None
    initiator_name: str
    timeouts: Timeouts | None
    login_timeout: float
    reconnect_timeout: float
    max_attempts: int
    environ: Mapping[str, str] | None
    digests: bool


class DeviceBase(Recovery):
    """A device's options, names, admission, recovery counters, geometry and block plans."""

    def __init__(
        self,
        url: str | IscsiUrl,
        *,
        arena: Arena | None = None,
        initiator_name: str = DEFAULT_INITIATOR_NAME,
        timeouts: Timeouts | None = None,
        login_timeout: float = 10.0,
        reconnect_timeout: float = 60.0,
        max_attempts: int = 4,
        environ: Mapping[str, str] | None = None,
        digests: bool = False,
        policy: Policy = Policy.RESERVE,
    ) -> None:
        """``arena``: the device's memory (a new one of 16 MiB if None); ``environ``: where
        the URL's credentials may come from; ``digests`` asks for CRC32C header and data
        digests (the target may refuse); ``max_attempts`` and ``reconnect_timeout`` bound
        recovery (:class:`~earmark.initiator.recovery.Recovery`); ``policy`` is the
        asyncio engine's (the blocking engine always reserves)."""
        self.url = url if isinstance(url, IscsiUrl) else parse_url(url, environ=environ)
        if self.url.target is None:
            raise ValueError(f"{self.url} names no target: a block device needs /target-iqn/lun")
        super().__init__(str(self.url), max_attempts, reconnect_timeout)
        self.arena = arena if arena is not None else Arena(DEFAULT_ARENA_BYTES)
        self.initiator_name = initiator_name
        self.timeouts = timeouts or Timeouts()
        self.login_timeout = login_timeout
        self._wants = wants(digests)
        self.name = f"initiator:{self.url.target}/{self.url.lun}"
        self.isid = new_isid()
        self.policy = policy
        self.admission = Admission(self.arena, self.name, reserves=policy is Policy.RESERVE)
        self._block_size = 0
        #: Bytes, as READ CAPACITY said: a field, not a property, since the page cache
        #: checks every write's range against it (a call each time).
        self.size = 0

    def login_steps(self) -> LoginSteps:
        """The login of a new connection of this device's session (same ISID, TSIH 0)."""
        url = self.url
        login = InitiatorLogin(self.initiator_name, target_name=url.target, isid=self.isid,
                               chap=url.chap, mutual=url.mutual, wants=self._wants)
        return LoginSteps(login, f"login to {url}")

    def command_cost(self, write: bool, nbytes: int) -> Mapping[int, int]:
        """Bytes per level (TASK, WIRE) one command moving ``nbytes`` draws."""
        return self.admission.cost(write, nbytes)

    @property
    def params(self) -> SessionParams:
        """The limits the last login negotiated."""
        return self.admission.params

    def _geometry_from(self, capacity: memoryview) -> None:
        """Block size and count from READ CAPACITY(16)'s answer."""
        cap = C.parse_read_capacity_16(capacity)
        self._block_size = cap.block_size
        self.size = cap.num_blocks * cap.block_size

    def command(self, offset: int, view: memoryview, write: bool) -> bytes | None:
        """The CDB of the one command that reads into or writes ``view`` at ``offset``, None
        when that takes more than one (:meth:`plan`); raises, in words, unless it is whole
        blocks inside the device. What every block call asks first: no plan is built for
        the common call of one command."""
        n, bs = len(view), self._block_size
        if offset % bs or n % bs or offset < 0 or offset + n > self.size:
            check_extent(offset, n, bs, self.size)  # raises
        if n > MAX_IO_BYTES:
            return None
        return (C.write_16 if write else C.read_16)(offset // bs, n // bs)

    def plan(self, offset: int, view: memoryview, write: bool) -> Plan:
        """Every command of a block call, none moving more than MAX_IO_BYTES; raises as
        :meth:`command`."""
        cdb = self.command(offset, view, write)
        if cdb is not None:
            return [(cdb, view)]
        bs, op = self._block_size, C.write_16 if write else C.read_16
        return [(op((offset + at) // bs, len(part) // bs), part) for at, part in chunks(view)]

    def page_command(self, offset: int, nbytes: int, write: bool) -> bytes:
        """The CDB moving the page cache's ``nbytes`` at ``offset`` (checked by the cache)."""
        bs = self._block_size
        return (C.write_16 if write else C.read_16)(offset // bs, nbytes // bs)

    def unmap(self, offset: int, length: int) -> tuple[bytes, memoryview]:
        """UNMAP's CDB and parameter list for the range; raises, in words, as :meth:`plan`."""
        check_extent(offset, length, self._block_size, self.size)
        return unmap_command(offset, length, self._block_size)

    @property
    def block_size(self) -> int:
        return self._block_size
