"""`earmark admin --socket PATH REQUEST`: change a running `earmark serve --admin-socket
PATH` without a restart (see earmark.service.admin), as tgtadm does for tgtd.

    earmark admin --socket /run/earmark.sock sessions
    earmark admin --socket /run/earmark.sock add-lun IQN 3 disk3.img [--size 1G] [--readonly]
    earmark admin --socket /run/earmark.sock remove-lun IQN 3
    earmark admin --socket /run/earmark.sock resize-lun IQN 3 2G
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "admin", help="change a running target: sessions, add/remove/resize a LUN",
        description="Send one request to `earmark serve --admin-socket PATH`.")
    p.add_argument("--socket", type=Path, required=True, metavar="PATH",
                   help="the target's --admin-socket")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    ops = p.add_subparsers(dest="op", metavar="REQUEST", required=True)
    ops.add_parser("sessions", help="list connections and sessions")
    add = ops.add_parser("add-lun", help="serve FILE as LUN of target IQN")
    add.add_argument("target", metavar="IQN")
    add.add_argument("lun", type=int)
    add.add_argument("file", type=Path)
    add.add_argument("--size", help="create FILE with this size first (e.g. 1G)")
    add.add_argument("--readonly", action="store_true")
    remove = ops.add_parser("remove-lun", help="new logins no longer see the LUN")
    remove.add_argument("target", metavar="IQN")
    remove.add_argument("lun", type=int)
    resize = ops.add_parser("resize-lun", help="grow or shrink a LUN's file; its sessions "
                                               "see CAPACITY DATA HAS CHANGED")
    resize.add_argument("target", metavar="IQN")
    resize.add_argument("lun", type=int)
    resize.add_argument("size", help="the new size (e.g. 2G)")


def run(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"op": args.op}
    if args.op != "sessions":
        request.update(target=args.target, lun=args.lun)
    if args.op == "add-lun":
        request.update(file=str(args.file.resolve()), size=args.size, readonly=args.readonly)
    elif args.op == "resize-lun":
        request["size"] = args.size
    try:
        answer = ask(args.socket, request)
    except OSError as exc:
        print(f"earmark admin: cannot reach {args.socket}: {exc.strerror or exc}: is `earmark "
              "serve --admin-socket` running there?", file=sys.stderr)
        return 2
    if not answer.get("ok"):
        print(f"earmark admin: {answer.get('error')}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer))
    elif args.op == "sessions":
        for row in answer["connections"]:
            who = (f" {row['initiator']} -> {row['target'] or 'discovery'} isid {row['isid']} "
                   f"LUNs {row['luns']} in flight {row['in_flight']}"
                   if row["state"] == "session" else "")
            print(f"{row['name']} {row.get('peer', '?')} {row['state']}{who}")
    else:
        print(" ".join(f"{k} {v}" for k, v in answer.items() if k != "ok") or "done")
    return 0


def ask(path: Path, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """One request, one answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        with sock.makefile("rb") as answers:
            answer: dict[str, Any] = json.loads(answers.readline())
    return answer
