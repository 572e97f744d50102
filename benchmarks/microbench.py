"""What the micro-benchmarks share: an in-process server on a temp SQLite database, repeated runs,
and one line per figure with its median and spread."""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from chat_server.auth import TokenAuthority
from chat_server.config import Settings
from chat_server.web.app import create_app
from tests.conftest import SECRET
from tests.hardening.conftest import Server


@asynccontextmanager
async def serving(**overrides: Any) -> AsyncIterator[Server]:
    """A server with these Settings overrides on 127.0.0.1 and a free port, as the hardening tests
    build it (inbound frame budget off unless overridden); everything is closed on the way out."""
    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp:
        base = Settings(database_url=f"sqlite:///{Path(tmp) / 'chat.db'}", jwt_secret=SECRET,
                        frames_per_s=0)
        settings = replace(base, **overrides)
        app = create_app(settings)
        async with TestClient(TestServer(app)) as client:
            server = Server(client, app, TokenAuthority(SECRET), settings)
            try:
                yield server
            finally:
                for raw in server.raws:
                    raw.close()
                for stomp in server.opened:
                    await stomp.ws.close()


def runs_argument(description: str, default: int = 5) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=default,
                        help=f"how many times to measure (default {default})")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def figure(name: str, values: Sequence[float], unit: str, digits: int = 1) -> str:
    """``name: median M unit (min A, max B, stdev S over N runs)``."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return (f"{name}: median {statistics.median(values):.{digits}f} {unit} "
            f"(min {min(values):.{digits}f}, max {max(values):.{digits}f}, "
            f"stdev {spread:.{digits}f} over {len(values)} runs)")
