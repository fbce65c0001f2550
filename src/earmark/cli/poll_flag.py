"""``--poll MICROSECONDS``: one flag, one limit and one wording for every command that
polls its loop (`earmark.busy_poll` says when polling pays)."""

from __future__ import annotations

import argparse

__all__ = ["add_poll_flag"]

MAX_US = 1000
"""A longer window is no longer a wait for the next request: it is a spinning CPU."""


def _seconds(text: str) -> float:
    try:
        us = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of microseconds") \
            from None
    if not 0 <= us <= MAX_US:
        raise argparse.ArgumentTypeError(f"{us} is not 0 to {MAX_US} microseconds")
    return us / 1e6


def add_poll_flag(parser: argparse.ArgumentParser, default_us: int, waits_for: str,
                  when: str = "after each request and answer") -> None:
    """``args.poll``: seconds to poll ``when`` (0: sleep at once)."""
    parser.add_argument(
        "--poll", type=_seconds, default=default_us / 1e6, metavar="MICROSECONDS",
        help=f"{when}, keep polling up to that long before sleeping, "
             f"saving a wake-up a {waits_for} at queue depth 1 for up to one busy CPU while "
             f"requests flow (default {default_us}; 0: never). After a poll that saw nothing "
             "come or lost its CPU to another process, polling rests 1 ms, twice as long "
             "after each next such poll, up to 0.1 s")
