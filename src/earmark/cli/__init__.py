"""The `earmark` command: one entry point, one module per subcommand.

Each subcommand module has ``add_parser(subparsers)`` and ``run(args) -> exit status``;
a mistake a user can make ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
from typing import Protocol

from earmark import __version__
from earmark.cli import bench, check, demo, ls, serve


class Subcommand(Protocol):
    def add_parser(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        ...

    def run(self, args: argparse.Namespace) -> int: ...


#: In the order ``earmark --help`` lists them.
COMMANDS: dict[str, Subcommand] = {
    "demo": demo, "serve": serve, "ls": ls, "bench": bench, "check": check,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="earmark",
        description=(
            "Network block storage (iSCSI initiator, page cache, target) that reserves "
            "all the memory a unit of work needs before admitting it."
        ),
    )
    parser.add_argument("--version", action="version", version=f"earmark {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return COMMANDS[args.command].run(args)
