"""Fixtures for tests of the parts behind a socket: a migrated SQLite store in a temp dir, the
worker's metrics, and the fan-out over the in-process broker (tests/store overrides `store`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chat_server.broker.memory import MemoryBroker
from chat_server.fanout import Fanout
from chat_server.metrics import Metrics
from chat_server.store.migrate import migrate
from chat_server.store.sql import SqlStore, open_store


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def store(tmp_path: Path, metrics: Metrics) -> AsyncIterator[SqlStore]:
    url = f"sqlite:///{tmp_path}/chat.db"
    await migrate(url)
    opened = await open_store(url)
    opened.observe_batch = metrics.append_batch_size.observe  # as the composition root does
    yield opened
    await opened.close()


@pytest.fixture
async def fanout(store: SqlStore, metrics: Metrics) -> AsyncIterator[Fanout]:
    broker = MemoryBroker()
    fan = Fanout(broker, store, gap_wait_s=0.05, reconcile_interval_s=0, metrics=metrics)
    await broker.start(fan)
    yield fan
    await fan.close()
    await broker.close()
