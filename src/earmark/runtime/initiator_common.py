"""What both initiator engines (asyncio and blocking) share, so neither writes it twice.

The limits they ask for at login, what one command costs in memory, the checks
on an I/O's extent, the rule for retrying after a UNIT ATTENTION, and how a
failed login reads to the user.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from earmark.initiator.errors import (
    AuthenticationFailedError,
    CommandAbortedError,
    InitiatorError,
    LoginError,
    TargetNotFoundError,
)
from earmark.initiator.session import Command, Timeouts
from earmark.initiator.url import IscsiUrl, parse_url
from earmark.iscsi.errors import AuthenticationError, ProtocolError
from earmark.iscsi.login import LoginFailed
from earmark.iscsi.negotiation import SessionParams
from earmark.iscsi.opcodes import LoginStatus
from earmark.memory.arena import Arena
from earmark.memory.levels import (
    DATA_OUT_HEADER_BYTES,
    RESPONSE_HEADER_BYTES,
    TASK_DESCRIPTOR_BYTES,
)
from earmark.scsi import cdb as C
from earmark.scsi.sense import ScsiError, SenseKey

__all__ = [
    "DEFAULT_ARENA_BYTES",
    "DEFAULT_INITIATOR_NAME",
    "MAX_IO_BYTES",
    "SENSE_BYTES",
    "WANTS",
    "DeviceBase",
    "check_extent",
    "chunks",
    "command_bytes",
    "login_error",
    "new_isid",
    "unmap_command",
    "wants",
]

DEFAULT_INITIATOR_NAME = "iqn.2024-01.org.earmark:initiator"
DEFAULT_ARENA_BYTES = 16 << 20
MAX_IO_BYTES = 1 << 20
"""Largest single command; bigger requests are split and issued together."""
SENSE_BYTES = 256
"""SenseLength (2) + the largest fixed or descriptor sense (252), one granule-aligned run."""
_UA_RETRIES = 3

WANTS: Mapping[str, str] = {
    "MaxRecvDataSegmentLength": "262144",
    "MaxBurstLength": "16776192",
    "FirstBurstLength": "262144",
    "InitialR2T": "No",
    "ImmediateData": "Yes",
}
"""What libiscsi asks for too: large segments so a 1 MiB read is a handful of PDUs,
and immediate plus unsolicited data so a small write is one round trip."""


def wants(digests: bool) -> dict[str, str]:
    """The keys to offer at login; ``digests`` asks for CRC32C (the target may refuse)."""
    extra = {"HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None"} if digests else {}
    return {**WANTS, **extra}


def new_isid() -> int:
    """A random-format ISID (T=10b, RFC 7143 §11.12.5): unique per device object, kept
    across reconnects so the target reinstates the session instead of adding one."""
    return (0x80 << 40) | secrets.randbits(40)


def command_bytes(params: SessionParams, write: bool, nbytes: int) -> tuple[int, int]:
    """(TASK, WIRE) bytes one command moving ``nbytes`` draws, from the negotiated limits.

    Receive headers are parsed in the connection's receive buffer and sense is
    a few bytes, so WIRE is charged at its nominal size, like the descriptors
    (memory/levels.py); the reservation is what guarantees it exists.

    Counts are upper bounds: a burst boundary can split a PDU, so each burst
    may add one PDU beyond length / MaxRecvDataSegmentLength.
    """
    bursts = -(-nbytes // params.max_burst_length)
    if write:
        pdus = -(-nbytes // params.target_mrdsl) + bursts
        task = TASK_DESCRIPTOR_BYTES + pdus * DATA_OUT_HEADER_BYTES
        headers = bursts  # R2Ts
    else:
        task = TASK_DESCRIPTOR_BYTES
        headers = -(-nbytes // params.initiator_mrdsl) + bursts  # Data-In
    return task, RESPONSE_HEADER_BYTES + SENSE_BYTES + headers * RESPONSE_HEADER_BYTES


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


def login_error(exc: Exception, where: str) -> InitiatorError:
    """A failed login as the typed error a user can act on."""
    if isinstance(exc, LoginFailed):
        status = exc.status
        cls: type[LoginError] = LoginError
        if status in (LoginStatus.NOT_FOUND, LoginStatus.TARGET_REMOVED):
            cls = TargetNotFoundError
        elif status in (LoginStatus.AUTHENTICATION_FAILURE, LoginStatus.AUTHORIZATION_FAILURE):
            cls = AuthenticationFailedError
        return cls(f"{where}: {exc}", int(status))
    if isinstance(exc, AuthenticationError):
        return AuthenticationFailedError(f"{where}: {exc.reason}")
    if isinstance(exc, ProtocolError):
        return LoginError(f"{where}: the target broke the login: {exc.reason}")
    if isinstance(exc, TimeoutError):
        return LoginError(f"{where}: no login response in time")
    return LoginError(f"{where}: the target closed the connection during login ({exc})")


class DeviceBase:
    """What a device of either engine is given and keeps: which LUN, who it logs in as,
    how long it waits, its memory, its session's limits and how often it recovered."""

    def __init__(
        self,
        url: str | IscsiUrl,
        *,
        arena: Arena | None,
        initiator_name: str,
        timeouts: Timeouts | None,
        login_timeout: float,
        reconnect_timeout: float,
        max_attempts: int,
        environ: Mapping[str, str] | None,
        digests: bool,
    ) -> None:
        self.url = url if isinstance(url, IscsiUrl) else parse_url(url, environ=environ)
        if self.url.target is None:
            raise ValueError(f"{self.url} names no target: a block device needs /target-iqn/lun")
        self.arena = arena if arena is not None else Arena(DEFAULT_ARENA_BYTES)
        self.initiator_name = initiator_name
        self.timeouts = timeouts or Timeouts()
        self.login_timeout = login_timeout
        self.reconnect_timeout = reconnect_timeout
        self.max_attempts = max_attempts
        self._wants = wants(digests)
        self.name = f"initiator:{self.url.target}/{self.url.lun}"
        self.isid = new_isid()
        self.params = SessionParams()
        #: Sessions re-established, commands issued again (on a new session or after
        #: an abort), and commands aborted after a timeout.
        self.reconnects = 0
        self.reissued = 0
        self.aborts = 0
        self._block_size = 0
        self._blocks = 0

    def _send_again(self, cmd: Command) -> bool:
        """Whether a finished command is to be sent again on the same session, its error
        cleared if so: a new I_T nexus (first login, reinstatement) reports UNIT
        ATTENTION once and the command itself was not run; a command that timed out and
        that the target aborted (ABORT TASK) goes again while it has attempts left."""
        error = cmd.error
        if isinstance(error, ScsiError):
            again = (error.key == SenseKey.UNIT_ATTENTION
                     and cmd.attempts < self.max_attempts + _UA_RETRIES)
        else:
            again = isinstance(error, CommandAbortedError) and cmd.attempts < self.max_attempts
            if again:
                self.aborts += 1
                self.reissued += 1
        if again:
            cmd.error = None
            cmd.status = None
        return again

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def size(self) -> int:
        return self._blocks * self._block_size
