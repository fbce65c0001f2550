"""`earmark serve --log-format json`: one JSON object per line, for log shippers that
would otherwise parse English.

Every line has the same keys: time (UTC, ISO 8601), level, event (the message), session,
initiator, target, lun (null where the event has none) and fields (what else it carries:
a record's ``extra={"fields": {...}}``, the logger, a traceback). A record about a
connection names it as its first argument (``"%s: closing: %s", conn.name, ...``): the
session, initiator and target are that connection's, looked up as the line is written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from earmark.runtime.connection import TargetConnection


@dataclass(frozen=True, slots=True)
class Context:
    """Who a log line is about."""

    session: str | None = None
    initiator: str | None = None
    target: str | None = None
    lun: int | None = None


NOBODY = Context()


def line(level: str, event: str, context: Context = NOBODY, *, when: float | None = None,
         fields: Mapping[str, Any] | None = None) -> str:
    """One JSON log line (without its newline)."""
    stamp = datetime.fromtimestamp(when, UTC) if when is not None else datetime.now(UTC)
    return json.dumps({
        "time": stamp.isoformat(timespec="milliseconds"), "level": level, "event": event,
        "session": context.session, "initiator": context.initiator, "target": context.target,
        "lun": context.lun, "fields": dict(fields or {}),
    }, default=str)


def connections_context(connections: Mapping[int, TargetConnection]
                        ) -> Callable[[object], Context | None]:
    """Who `name` is among a server's live connections (None: no connection's name)."""
    def who(name: object) -> Context | None:
        if not isinstance(name, str):
            return None
        for conn in list(connections.values()):  # a copy: log lines come from any thread
            if conn.name == name:
                if conn.session is None:
                    return Context(name)
                params = conn.session.params
                return Context(name, params.initiator_name, params.target_name)
        return None

    return who


def nobody(arg: object) -> Context | None:
    return None


class JsonFormatter(logging.Formatter):
    """`who` names the connection a record's first argument is, if it is one; it is set
    once the server exists (errors building it are logged before)."""

    def __init__(self) -> None:
        super().__init__()
        self.who: Callable[[object], Context | None] = nobody

    def format(self, record: logging.LogRecord) -> str:
        args = record.args if isinstance(record.args, tuple) else ()
        context = (self.who(args[0]) if args else None) or NOBODY
        context = getattr(record, "context", None) or context
        fields = {"logger": record.name, **getattr(record, "fields", {})}
        if record.exc_info:
            fields["traceback"] = self.formatException(record.exc_info)
        return line(record.levelname.lower(), record.getMessage(), context,
                    when=record.created, fields=fields)


def configure(json_format: bool, level: int) -> JsonFormatter | None:
    """Send earmark's logs to stderr, as text (`earmark: ...`) or as JSON lines (then the
    formatter, to tell it about the server)."""
    handler = logging.StreamHandler()
    formatter = JsonFormatter() if json_format else None
    handler.setFormatter(formatter or logging.Formatter("earmark: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return formatter
