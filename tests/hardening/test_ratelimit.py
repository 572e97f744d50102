"""The keyed token bucket behind the REST and failed-CONNECT limits (sans-I/O, a fake clock)."""

from __future__ import annotations

from chat_server.ratelimit import RateLimiter


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
