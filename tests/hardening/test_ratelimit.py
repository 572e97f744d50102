"""Token buckets: the keyed ones behind the REST and failed-CONNECT limits, and the inbound
frame budget (sans-I/O, a fake clock)."""

from __future__ import annotations

import pytest

from chat_server.ratelimit import RateLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate_then_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == 0.5  # refused, nothing taken
    assert limiter.retry_after("a") == 0.5
    assert limiter.acquire("b") == 0.0  # keys are independent
    clock.now = 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == 0.5


def test_zero_rate_disables() -> None:
    limiter = RateLimiter(0, 1)
    assert all(limiter.acquire("a") == 0.0 for _ in range(100))
    assert len(limiter) == 0


def test_memory_is_bounded_by_max_keys() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 2, max_keys=100, clock=clock)
    for n in range(10_000):
        limiter.acquire(n)
        limiter.acquire(n)  # every bucket busy: idle pruning cannot help, halving does
    assert len(limiter) <= 100
    while len(limiter) < 100:
        limiter.acquire(("busy", len(limiter)))
    clock.now = 10.0  # all refilled: idle keys are forgotten first, at the next new key
    limiter.acquire("new")
    assert len(limiter) == 1


def test_a_bucket_lends_past_empty_and_says_how_long_to_wait() -> None:
    bucket = TokenBucket.full(rate=10.0, burst=2, now=0.0)
    assert [bucket.borrow(0.0) for _ in range(2)] == [0.0, 0.0]  # the burst
    assert bucket.borrow(0.0) == pytest.approx(0.1)  # one token short: a tenth of a second
    assert bucket.borrow(0.0) == pytest.approx(0.2)  # the debt adds up
    assert bucket.borrow(1.0) == 0.0  # a second later it has refilled to the burst


def test_a_bucket_with_no_rate_never_waits() -> None:
    bucket = TokenBucket.full(rate=0.0, burst=1, now=0.0)
    assert all(bucket.borrow(0.0) == 0.0 for _ in range(100))
