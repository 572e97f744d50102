"""The broker servers of the contract suite: one per engine for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import BROKER_POOL, BrokerPool


@pytest.fixture(scope="session")
def broker_pool() -> Iterator[BrokerPool]:
    BROKER_POOL.hold()
    try:
        yield BROKER_POOL
    finally:
        BROKER_POOL.release()
