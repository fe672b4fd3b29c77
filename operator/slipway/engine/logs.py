"""How the operator's log lines look: for a person (the default), or for machines.

``slipway run --log-format json`` (or ``SLIPWAY_LOG_FORMAT=json``) writes one JSON object per
line with the same keys on every line: ``time`` (RFC 3339, UTC, milliseconds), ``level``,
``logger``, ``message``, and what the line is about: ``object`` (``namespace/name``),
``revision``, ``phase`` and ``event`` (the reason of an Event posted or not), each ``null`` when
the line is not about one. A failure adds ``exception``. Log shippers (Loki, Elasticsearch,
Cloud Logging) then filter on ``object`` or ``event`` without parsing text.

The per-object lines say what they are about with ``extra=about(...)``; kopf's own per-object
lines carry their object too.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

FORMATS = ("text", "json")
FIELDS = ("object", "revision", "phase", "event")
_KEY = "slipway_about"


def about(namespace: str, name: str, *, revision: str | None = None, phase: str | None = None,
          event: str | None = None) -> dict[str, Any]:
    """``extra=`` for a log call about one ModelDeployment."""
    return {_KEY: {"object": f"{namespace}/{name}", "revision": revision, "phase": phase,
                   "event": event}}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, one line each (newlines in a message are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = dict.fromkeys(FIELDS)
        ref = getattr(record, "k8s_ref", None)  # kopf's per-object loggers
        if isinstance(ref, dict) and ref.get("name"):
            fields["object"] = f"{ref.get('namespace') or ''}/{ref['name']}".lstrip("/")
        fields.update(getattr(record, _KEY, None) or {})
        line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def check(log_format: str) -> None:
    """Refuse an unknown format (from SLIPWAY_LOG_FORMAT: argparse checks only what is typed)
    before anything starts."""
    if log_format not in FORMATS:
        raise SystemExit(f"slipway: log format {log_format!r} is not one of "
                         f"{', '.join(FORMATS)}")


def use(log_format: str) -> None:
    """Put the chosen format on the root logger's handlers (kopf.configure made them)."""
    check(log_format)
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
