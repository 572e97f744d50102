"""`format_timestamp` keeps the last second it formatted: the cache must never show through."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from chat_server.models import format_timestamp

# Years 1 to 9999 in milliseconds since the epoch: what datetime can represent.
MS = st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999)


def _reference(epoch_ms: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=UTC).timestamp() + epoch_ms // 1000
    second = datetime.fromtimestamp(moment, tz=UTC)
    return f"{second.isoformat(timespec='seconds').removesuffix('+00:00')}.{epoch_ms % 1000:03d}Z"


@given(st.lists(MS, min_size=1, max_size=20))
def test_every_timestamp_is_its_own_whatever_came_before(values: list[int]) -> None:
    for epoch_ms in values:
        assert format_timestamp(epoch_ms) == _reference(epoch_ms)


def test_the_same_second_twice_and_its_neighbours() -> None:
    base = 1_764_547_200_000  # 2025-12-01T00:00:00.000Z
    assert format_timestamp(base + 5) == "2025-12-01T00:00:00.005Z"
    assert format_timestamp(base + 999) == "2025-12-01T00:00:00.999Z"
    assert format_timestamp(base + 1000) == "2025-12-01T00:00:01.000Z"
    assert format_timestamp(base - 1) == "2025-11-30T23:59:59.999Z"
    assert format_timestamp(base + 5) == "2025-12-01T00:00:00.005Z"
