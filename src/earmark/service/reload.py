"""SIGHUP: `earmark serve --config` reads its file again and serves what it says now,
without a restart.

New targets and LUNs appear for the logins that follow. A removed target refuses new
logins (the login finds no such target), and so does a removed LUN (new sessions do not
have it); sessions that have them keep them until they end, so nothing in flight is cut
off: they drain. Changed CHAP and ACLs apply to new logins. A LUN configured exactly as
before is the same unit still (open file, reservations, counters). The [server] table
cannot change under a listening socket and an allocated arena: a change there is
reported and not applied. A file that does not load, or a LUN that cannot be opened,
changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from earmark.runtime.server import TargetServer
from earmark.target import build
from earmark.target.config import ServeConfig
from earmark.target.unit import LogicalUnit

log = logging.getLogger(__name__)


@dataclass
class Changes:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: Targets whose CHAP, ACL or alias changed.
    login_changed: list[str] = field(default_factory=list)
    #: [server] settings that changed in the file but need a restart.
    needs_restart: list[str] = field(default_factory=list)


class Reloader:
    def __init__(self, server: TargetServer, load: Callable[[], ServeConfig],
                 current: ServeConfig, retired: list[LogicalUnit]) -> None:
        self.server = server
        self._load = load
        self.current = current
        #: Units no longer served to new logins; closed when the target stops (sessions
        #: may still use them until then).
        self.retired = retired

    def reload(self) -> Changes:
        """Apply the file as it is now; raises what loading it raises, changing nothing."""
        cfg = self._load()
        portal = self.server.portal
        old_luns = {(t.iqn, lun.lun): lun for t in self.current.targets for lun in t.luns}
        keep = {(iqn, old_luns[(iqn, n)]): unit for iqn, spec in portal.targets.items()
                for n, unit in spec.units.items() if (iqn, n) in old_luns}
        specs = build.target_specs(cfg.targets, portal.config, keep)
        changes = Changes()
        served = {(s.entry.iqn, n): u for s in specs for n, u in s.units.items()}
        for iqn, spec in portal.targets.items():
            for n, unit in spec.units.items():
                if served.get((iqn, n)) is not unit:
                    changes.removed.append(f"{iqn} LUN {n}")
                    self.retired.append(unit)
        old_units = {(iqn, n): u for iqn, s in portal.targets.items() for n, u in s.units.items()}
        changes.added = [f"{iqn} LUN {n}" for (iqn, n), unit in served.items()
                         if old_units.get((iqn, n)) is not unit]
        for spec in specs:
            old = portal.entries.get(spec.entry.iqn)
            if old is not None and old != spec.entry:
                changes.login_changed.append(spec.entry.iqn)
        changes.needs_restart = [
            name for name in ("address", "port", "memory", "policy", "login_timeout",
                              "max_connections", "nop_interval", "nop_timeout")
            if getattr(cfg, name) != getattr(self.current, name)]
        portal.set_targets(specs)
        self.current = replace(self.current, targets=cfg.targets)
        return changes



def close_retired(retired: list[LogicalUnit]) -> None:
    """Sync and close the units a reload or `earmark admin` retired (the target stopped)."""
    for unit in retired:
        unit.backing.sync()
        unit.backing.close()
    retired.clear()
