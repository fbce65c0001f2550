"""`--metrics ADDRESS:PORT` and `--portal ADDRESS:PORT`, checked before anything starts
(and without prometheus-client, which is imported only once metrics are asked for)."""

from __future__ import annotations


class AddressError(ValueError):
    """A flag's value is not ADDRESS:PORT; the message is the fix."""


def parse_address(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise AddressError(f"{flag} {text!r} must be ADDRESS:PORT, e.g. 127.0.0.1:9260")
    return host.strip("[]"), int(port)
