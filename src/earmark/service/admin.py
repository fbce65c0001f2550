"""`earmark serve --admin-socket PATH`: live changes over a Unix socket only its owner may
use, as tgtadm does for tgtd: list sessions and connections, add and remove a LUN, resize
one (its sessions see CAPACITY DATA HAS CHANGED on their next command).

One JSON object per line each way: a request ``{"op": ..., ...}``, an answer ``{"ok":
true, ...}`` or ``{"ok": false, "error": "..."}`` (the message is the fix). The requests
run on the target's loop, between PDUs, like everything else that changes its state.
An added or removed LUN is for the logins that follow: sessions keep the LUNs they
have until they end (as a reload does); the next SIGHUP serves what the file says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from earmark.runtime.server import TargetServer
from earmark.scsi.sense import ScsiError, SenseKey
from earmark.target import build
from earmark.target.backing import BackingError, FileBacking
from earmark.target.config import LunConfig
from earmark.target.portal import TargetSpec
from earmark.target.unit import LogicalUnit
from earmark.units import SizeError, parse_size

log = logging.getLogger(__name__)

#: SPC-4's CAPACITY DATA HAS CHANGED.
_CAPACITY_CHANGED = (0x2A, 0x09)
#: A request line may be no longer than this (a path and a few names).
_MAX_REQUEST = 64 << 10


class AdminError(Exception):
    """A request that cannot be done; the message says why and what to do."""


class Admin:
    def __init__(self, server: TargetServer, retired: list[LogicalUnit]) -> None:
        self.server = server
        #: Units removed but maybe still used by sessions: closed when the target stops.
        self.retired = retired
        self._server: asyncio.AbstractServer | None = None

    async def start(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            if path.is_socket():
                path.unlink()  # a socket left by a target that did not stop cleanly
        old = os.umask(0o177)  # the socket is born 0600: whoever can connect is admin
        try:
            self._server = await asyncio.start_unix_server(self._client, path,
                                                           limit=_MAX_REQUEST)
        finally:
            os.umask(old)
        self.path = path

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(self.answer(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError):  # gone, or a line past the limit
            pass
        finally:
            writer.close()

    def answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise AdminError("a request is a JSON object with an \"op\"")
            op = request.get("op")
            handler = _OPS.get(op) if isinstance(op, str) else None
            if handler is None:
                raise AdminError(f"unknown op {op!r}: use one of {sorted(_OPS)}")
            return {"ok": True, **handler(self, request)}
        except json.JSONDecodeError:
            return {"ok": False, "error": "a request is one JSON object per line"}
        except (AdminError, BackingError, build.SetupError, SizeError) as exc:
            return {"ok": False, "error": str(exc)}

    # ------------------------------------------------------------------ requests

    def sessions(self, request: dict[str, Any]) -> dict[str, Any]:
        rows = []
        for conn_id, conn in sorted(self.server.connections.items()):
            session = conn.session
            row: dict[str, Any] = {"connection": conn_id, "name": conn.name,
                                   "state": "login" if session is None else "session"}
            peer = conn.transport.get_extra_info("peername") if conn.transport else None
            if peer:
                row["peer"] = f"{peer[0]}:{peer[1]}"
            if session is not None:
                row.update(initiator=session.params.initiator_name,
                           target=session.params.target_name,
                           type=session.params.session_type, isid=f"{session.nexus.isid:012x}",
                           luns=session.luns, in_flight=len(session.tasks))
            rows.append(row)
        return {"connections": rows}

    def add_lun(self, request: dict[str, Any]) -> dict[str, Any]:
        spec = self._target(request)
        number = _number(request)
        if number in spec.units:
            raise AdminError(f"{spec.entry.iqn} already has LUN {number}: remove it first")
        size = request.get("size")
        lun = LunConfig(number, Path(_text(request, "file")),
                        parse_size(str(size), "size") if size is not None else None,
                        bool(request.get("readonly", False)))
        spec.units[number] = build.file_unit(lun, self.server.portal.config)
        log.info("admin: added %s LUN %d (%s)", spec.entry.iqn, number, lun.file)
        return {"url": f"iscsi://{self.server.address}:{self.server.port}/{spec.entry.iqn}/"
                       f"{number}"}

    def remove_lun(self, request: dict[str, Any]) -> dict[str, Any]:
        spec = self._target(request)
        unit = spec.units.pop(self._lun(spec.units, request))
        self.retired.append(unit)
        log.info("admin: removed %s LUN %d", spec.entry.iqn, unit.number)
        return {"sessions_still_using_it": len(unit.sessions)}

    def resize_lun(self, request: dict[str, Any]) -> dict[str, Any]:
        spec = self._target(request)
        unit = spec.units[self._lun(spec.units, request)]
        backing = unit.backing
        if not isinstance(backing, FileBacking):
            raise AdminError("only a LUN on a file can be resized")
        if unit.disk.read_only:
            raise AdminError("a read-only LUN cannot be resized")
        block = unit.disk.block_size
        backing.resize(parse_size(str(request.get("size")), "size"), block)
        unit.disk = replace(unit.disk, num_blocks=backing.size // block)
        unit.tell_all(ScsiError(SenseKey.UNIT_ATTENTION, *_CAPACITY_CHANGED))
        log.info("admin: resized %s LUN %d to %d B", spec.entry.iqn, unit.number, backing.size)
        return {"size": backing.size, "sessions_told": len(unit.sessions)}

    # ------------------------------------------------------------------- helpers

    def _target(self, request: dict[str, Any]) -> TargetSpec:
        iqn = _text(request, "target")
        spec = self.server.portal.targets.get(iqn)
        if spec is None:
            raise AdminError(f"no target {iqn}: `earmark admin sessions` or the config "
                             "names them")
        return spec

    def _lun(self, units: dict[int, LogicalUnit], request: dict[str, Any]) -> int:
        number = _number(request)
        if number not in units:
            raise AdminError(f"no LUN {number} on that target: it has {sorted(units)}")
        return number


def _text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise AdminError(f"{key!r} must be a non-empty string")
    return value


def _number(request: dict[str, Any]) -> int:
    value = request.get("lun")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 16384:
        raise AdminError("'lun' must be a number from 0 to 16383")
    return value


_OPS = {"sessions": Admin.sessions, "add-lun": Admin.add_lun, "remove-lun": Admin.remove_lun,
        "resize-lun": Admin.resize_lun}
