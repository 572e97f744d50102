"""JSON in and out for every module: orjson is imported here and nowhere else."""

from __future__ import annotations

from typing import Any

import orjson

#: What `loads` raises on malformed JSON (a ValueError).
JSONDecodeError = orjson.JSONDecodeError


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)
