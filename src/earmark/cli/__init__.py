"""The `earmark` command: one entry point, one module per subcommand.

Each subcommand module has ``add_parser(subparsers)`` and ``run(args) -> exit status``;
a mistake a user can make ends in one line on stderr and exit status 2. Only the module
of the subcommand that runs is imported (all of them for ``earmark --help``): `earmark
serve` is a long-lived process, and the initiator, the demo and rich that the others
load would stay resident in it for nothing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Protocol, cast

from earmark import __version__


class Subcommand(Protocol):
    def add_parser(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        ...

    def run(self, args: argparse.Namespace) -> int: ...


#: In the order ``earmark --help`` lists them.
COMMANDS = ("demo", "serve", "admin", "ls", "bench", "check", "sim", "attach", "detach")


def command(name: str) -> Subcommand:
    return cast(Subcommand, importlib.import_module(f"earmark.cli.{name}"))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser for every subcommand, or for `only` that one."""
    parser = argparse.ArgumentParser(
        prog="earmark",
        description=(
            "Network block storage (iSCSI initiator, page cache, target) that reserves "
            "all the memory a unit of work needs before admitting it."
        ),
    )
    parser.add_argument("--version", action="version", version=f"earmark {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if only is None else (only,):
        command(name).add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return command(args.command).run(args)
