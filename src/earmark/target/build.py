"""The one way to build what a target serves, from `earmark serve`'s configuration or an
embedded target's parameters: its targets, their LUNs and Disk settings, its arena and
its SessionConfig. `earmark serve`, the embedded target the tests use and the demo all
come through here, so they serve the same disk.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

from earmark.iscsi.login import TargetEntry
from earmark.memory import Arena
from earmark.memory.levels import TargetLevel
from earmark.scsi.disk import Disk
from earmark.target.backing import Backing, FileBacking
from earmark.target.config import LunConfig, ServeConfig, TargetConfig
from earmark.target.portal import DEFAULT_LIMITS, PortalLimits, TargetSpec
from earmark.target.session import AdmissionPolicy, SessionConfig
from earmark.target.unit import LogicalUnit

BLOCK_SIZE = 512
#: The one target of an embedded target (tests, benchmarks, the demo).
EMBEDDED_IQN = "iqn.2026-11.org.earmark:embedded"
#: Largest transfer of one command; the target reserves its buffers before admitting it.
MAX_TRANSFER = 8 << 20
#: The arena's unit; a capacity is rounded down to it.
_GRANULE = 64


class SetupError(ValueError):
    """A LUN cannot be set up as asked; the message is the fix."""


@dataclass(frozen=True, slots=True)
class TargetSetup:
    """Everything a target server serves, and where it listens (port 0: any free one)."""

    targets: tuple[TargetSpec, ...]
    arena: Arena
    config: SessionConfig
    address: str = "127.0.0.1"
    port: int = 3260
    limits: PortalLimits = DEFAULT_LIMITS


def from_config(cfg: ServeConfig) -> TargetSetup:
    """`earmark serve`'s targets: LUN files created first where a size is given."""
    config = SessionConfig(policy=AdmissionPolicy(cfg.policy), nop_interval=cfg.nop_interval,
                           nop_timeout=cfg.nop_timeout)
    return TargetSetup(tuple(target_specs(cfg.targets, config)), target_arena(cfg.memory), config,
                       cfg.address, cfg.port, PortalLimits(cfg.login_timeout, cfg.max_connections))


def target_specs(
    targets: Sequence[TargetConfig],
    config: SessionConfig,
    keep: Mapping[tuple[str, LunConfig], LogicalUnit] | None = None,
) -> list[TargetSpec]:
    """The targets a configuration describes. A LUN configured exactly as one in `keep`
    (a reload) is that unit still: its open file, reservations and counters go on. If a
    LUN cannot be set up, the units opened for this call are closed again."""
    keep = keep or {}
    opened: list[LogicalUnit] = []
    specs = []
    try:
        for target in targets:
            units = {}
            for lun in target.luns:
                unit = keep.get((target.iqn, lun))
                if unit is None:
                    unit = file_unit(lun, config)
                    opened.append(unit)
                units[lun.lun] = unit
            entry = TargetEntry(target.iqn, alias=target.alias, chap=target.chap,
                                mutual=target.mutual, allowed_initiators=target.initiators)
            specs.append(TargetSpec(entry, units))
    except Exception:
        for unit in opened:
            unit.backing.close()
        raise
    return specs


class OneLun(TypedDict, total=False):
    """What an embedded target may choose of :func:`embedded`'s (the defaults are there)."""

    iqn: str
    memory: int
    policy: AdmissionPolicy
    chap: tuple[str, str] | None
    block_size: int
    write_cache: bool
    readonly: bool
    limits: PortalLimits
    power_on: bool


def one_lun(backing: Backing, *, serial: str = "EMBEDDED", **options: Unpack[OneLun]
            ) -> TargetSetup:
    """One target, LUN 0 on `backing`, on a free loopback port."""
    return embedded((backing,), serial=serial, **options)


def embedded(
    backings: Sequence[Backing],
    *,
    iqn: str = EMBEDDED_IQN,
    memory: int = 64 << 20,
    policy: AdmissionPolicy = AdmissionPolicy.RESERVE,
    chap: tuple[str, str] | None = None,
    block_size: int = BLOCK_SIZE,
    serial: str = "EMBEDDED",
    write_cache: bool = True,
    readonly: bool = False,
    limits: PortalLimits = DEFAULT_LIMITS,
    port: int = 0,
    power_on: bool = False,
) -> TargetSetup:
    """One target, LUN n on `backings[n]`, on loopback (port 0: a free one); `write_cache`
    False serves them with WCE=0 (every write synced before its status). LUN n > 0 has
    serial `serial`-n: multipath tools tell LUNs apart by it. `power_on`: each LUN tells
    every I_T nexus once that it powered on (a backing whose volatile cache a restart of
    the target may lose: the initiator must then not trust a flush for earlier writes)."""
    config = SessionConfig(policy=policy)
    units = {
        n: LogicalUnit(n, disk(b.size, f"{serial}-{n}" if n else serial, block_size=block_size,
                               config=config, write_cache=write_cache, read_only=readonly), b,
                       powered_on=set() if power_on else None)
        for n, b in enumerate(backings)
    }
    return TargetSetup((TargetSpec(TargetEntry(iqn, chap=chap), units),),
                       target_arena(memory), config, port=port, limits=limits)


def target_arena(memory: int) -> Arena:
    return Arena(memory // _GRANULE * _GRANULE or _GRANULE, levels=TargetLevel,
                 name="target arena")


def disk(size: int, serial: str, *, block_size: int, config: SessionConfig,
         write_cache: bool = True, read_only: bool = False, removable: bool = False) -> Disk:
    """The Disk a LUN of `size` bytes presents: its limits follow from one command
    buffer (`config.buffer_bytes`), which the target reserves before admitting a command.
    Without `write_cache` (WCE=0) every write is on stable storage before its status;
    `read_only` answers every write DATA PROTECT / WRITE PROTECTED (MODE SENSE says WP)."""
    return Disk(size // block_size, serial, block_size=block_size, write_cache=write_cache,
                read_only=read_only, removable=removable,
                max_transfer_bytes=MAX_TRANSFER,
                # WRITE SAME may cover no more than one transfer: initiators (libiscsi's
                # tests among them) read and write a whole WRITE SAME range with one command.
                max_write_same_blocks=MAX_TRANSFER // block_size,
                max_compare_blocks=min(255, config.buffer_bytes // (2 * block_size)),
                # WRITE ATOMIC is atomic because its data is written from one buffer.
                max_atomic_blocks=min(0xFFFF, config.buffer_bytes // block_size))


def file_unit(lun: LunConfig, config: SessionConfig) -> LogicalUnit:
    if lun.size is not None:
        _create(lun.file, lun.size)
    backing = FileBacking(lun.file, block_size=BLOCK_SIZE, read_only=lun.readonly)
    serial = hashlib.sha256(os.fsencode(lun.file.resolve())).hexdigest()[:16]
    return LogicalUnit(lun.lun, disk(backing.size, serial, block_size=BLOCK_SIZE, config=config,
                                     read_only=lun.readonly, removable=lun.removable),
                       backing)


def _create(path: Path, size: int) -> None:
    if size % BLOCK_SIZE:
        raise SetupError(f"--size {size} B is not a multiple of the {BLOCK_SIZE}-byte block "
                         "size: round it (e.g. 1G)")
    if path.exists():
        have = path.stat().st_size
        if have != size:
            raise SetupError(f"{path} exists with {have} B, not {size} B: drop --size to serve "
                             "it as it is, or remove it first")
        return
    try:
        with open(path, "xb") as f:
            f.truncate(size)
    except OSError as exc:
        raise SetupError(f"cannot create {path}: {exc.strerror}") from None
