"""The `earmark` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse

from earmark import __version__
from earmark.cli import check as check_cli
from earmark.cli import demo as demo_cli
from earmark.cli import serve
from earmark.runtime import initiator_cli


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
    demo_cli.add_parser(commands)
    serve.add_parser(commands)
    initiator_cli.add_parsers(commands)
    check_cli.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        return demo_cli.run(args)
    if args.command == "serve":
        return serve.run(args)
    if args.command in ("ls", "bench"):
        return initiator_cli.run(args)
    if args.command == "check":
        return check_cli.run(args)
    parser.error(f"unknown command {args.command!r}")

