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


def configure_logging_from_env() -> None:
    """LOG_FORMAT (plain or json) and LOG_LEVEL (INFO), for `serve` and gunicorn workers alike."""
    configure_logging(os.environ.get("LOG_FORMAT", "plain"), os.environ.get("LOG_LEVEL", "INFO"))
