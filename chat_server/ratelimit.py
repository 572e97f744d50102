"""Keyed token buckets: REST requests per user, failed STOMP CONNECTs per IP address.

Sans-I/O: the clock is a parameter (monotonic seconds), so every rule is testable without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """`rate` tokens per second per key, at most `burst` saved up; `rate == 0` disables it.

    Memory is bounded: past `max_keys` keys, buckets that have refilled (idle keys) are
    forgotten, and if that is not enough the oldest half goes (a forgotten key starts full).
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, float(burst))
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[Hashable, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _refill(self, key: Hashable, now: float) -> _Bucket | None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        return bucket

    def retry_after(self, key: Hashable) -> float:
        """Seconds until `key` has a token (0: it has one now); takes nothing."""
        if not self.enabled:
            return 0.0
        bucket = self._refill(key, self._clock())
        if bucket is None or bucket.tokens >= 1.0:
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def acquire(self, key: Hashable) -> float:
        """Take a token for `key`: 0 when taken, else the seconds to wait (nothing taken)."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._refill(key, now)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        if bucket.tokens < 1.0:
            return (1.0 - bucket.tokens) / self.rate
        bucket.tokens -= 1.0
        return 0.0

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self.max_keys:
            return
        for key, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.stamp) * self.rate >= self.burst:
                del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            for key in list(self._buckets)[: len(self._buckets) // 2 + 1]:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
