"""Logging setup: one line per event, plain or JSON (`LOG_FORMAT=json`), never secrets."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

#: `extra=` fields that every formatter shows when a record carries them.
CONTEXT_FIELDS = ("session", "user", "room", "remote")
_PLAIN = "%(asctime)s %(levelname)s %(name)s %(message)s%(context)s"


class _ContextFilter(logging.Filter):
    """Renders the context fields as ` key=value` pairs for the plain format."""

    def filter(self, record: logging.LogRecord) -> bool:
        pairs = [
            f" {name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        ]
        record.context = "".join(pairs)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _AlembicPreamble(logging.Filter):
    """Drops the two lines Alembic's migration context logs on every start, its dialect and
    "Will assume non-transactional DDL" (on SQLite, though migrate.py runs the whole upgrade in
    one transaction); the lines of upgrades it actually runs pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Context impl ", "Will assume "))


_ALEMBIC_PREAMBLE = _AlembicPreamble()


def configure_logging(log_format: str = "plain", level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_ContextFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_PLAIN))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic announces each of its autogenerate plugins at INFO whenever it loads, on every
    # start; none of that concerns an operator. Its migration lines keep their level.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.migration").addFilter(_ALEMBIC_PREAMBLE)  # once


def configure_logging_from_env() -> None:
    """LOG_FORMAT (plain or json) and LOG_LEVEL (INFO), for `serve` and gunicorn workers alike."""
    configure_logging(os.environ.get("LOG_FORMAT", "plain"), os.environ.get("LOG_LEVEL", "INFO"))
