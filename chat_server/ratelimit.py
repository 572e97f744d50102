"""Token buckets: inbound frames per connection; keyed, REST requests per user and failed STOMP
CONNECTs per IP address.

Sans-I/O: the clock is a parameter (monotonic seconds), so every rule is testable without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; starts full."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, float(burst), float(burst), now)

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def borrow(self, now: float) -> float:
        """Take a token even when none is left: the seconds until the debt is repaid (0: none).

        A reader that waits that long before going on is held to the rate (back-pressure);
        `rate <= 0` disables the bucket.
        """
        if self.rate <= 0:
            return 0.0
        self.refill(now)
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


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
        self._buckets: dict[Hashable, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _refill(self, key: Hashable, now: float) -> TokenBucket | None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.refill(now)
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
            bucket = self._buckets[key] = TokenBucket.full(self.rate, self.burst, now)
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
