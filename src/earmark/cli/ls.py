"""`earmark ls URL`: the targets and LUNs of a portal, as SendTargets and each LUN report them.

Every failure a user can cause (bad URL, unknown target, refused login,
unreachable host, a SCSI error) is one line on stderr and exit code 2; a
traceback would be a bug. A target that refuses our login is reported and the
listing goes on with the next.
"""

from __future__ import annotations

import argparse
import os
import sys

import earmark.cli.loops as loops
from earmark.initiator.errors import InitiatorError
from earmark.initiator.url import ENV_SECRET, ENV_USER, IscsiUrl, parse_url
from earmark.runtime.initiator_device import BlockDevice, discover
from earmark.scsi import cdb as C
from earmark.scsi.sense import ScsiError

_DEVICE_TYPES = {0x00: "disk", 0x05: "cd/dvd", 0x0C: "controller", 0x1F: "no device"}

CREDENTIALS = f"CHAP credentials: iscsi://user%%secret@host/... or ${ENV_USER}/${ENV_SECRET}"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ls = subparsers.add_parser(
        "ls", help="list the targets and LUNs of an iSCSI portal",
        description=f"SendTargets discovery, then every LUN with its type and size. "
                    f"{CREDENTIALS}.",
    )
    ls.add_argument("url", help="iscsi://[user[%%secret]@]host[:port]")


def run(args: argparse.Namespace) -> int:
    try:
        return loops.run(_ls(args.url))
    except (InitiatorError, ScsiError, ValueError) as exc:
        print(f"earmark ls: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _ls(url_text: str) -> int:
    """Every target the portal lists, each with its LUNs; a target that refuses us is
    reported (stderr, exit 2 at the end) and the listing goes on with the next."""
    portal = parse_url(url_text, need_target=False, environ=os.environ)
    refused = 0
    for target in await discover(portal):
        print(f"Target: {target.name}  Portal: {', '.join(target.addresses)}", flush=True)
        url = IscsiUrl(portal.host, portal.port, target.name, 0, portal.user, portal.secret,
                       portal.target_user, portal.target_secret)
        try:
            async with BlockDevice(url, geometry=False, max_attempts=1) as dev:
                report = bytearray(4096)
                await dev.execute(C.report_luns(len(report)), read_into=memoryview(report))
                for lun in C.parse_report_luns(memoryview(report)):
                    print(f"  LUN {lun}: {await _describe(dev, lun)}")
        except (InitiatorError, ScsiError) as exc:
            refused += 1
            print(f"earmark ls: error: {target.name}: {exc}", file=sys.stderr, flush=True)
    return 2 if refused else 0


async def _describe(dev: BlockDevice, lun: int) -> str:
    inq = bytearray(96)
    await dev.execute(C.inquiry(len(inq)), read_into=memoryview(inq), lun=lun)
    info = C.parse_standard_inquiry(memoryview(inq))
    kind = _DEVICE_TYPES.get(info.device_type, f"type 0x{info.device_type:02x}")
    text = f"{kind} ({info.vendor} {info.product})".strip()
    if info.device_type == 0:
        cap_data = bytearray(32)
        await dev.execute(C.read_capacity_16(32), read_into=memoryview(cap_data), lun=lun)
        cap = C.parse_read_capacity_16(memoryview(cap_data))
        size = cap.num_blocks * cap.block_size
        text += f", {_human(size)} ({cap.num_blocks} blocks of {cap.block_size} B)"
    return text


def _human(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} B"
