"""Token buckets with an injected clock."""

from __future__ import annotations

from qpq_server._ratelimit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=50, burst=100, clock=clock)
    assert all(limiter.allow("a") for _ in range(100))
    assert not limiter.allow("a")
    assert limiter.allow("b")  # keys are independent
    clock.now += 0.1  # 5 tokens
    assert sum(limiter.allow("a") for _ in range(10)) == 5
    clock.now += 100
    assert sum(limiter.allow("a") for _ in range(200)) == 100  # capped at the burst


def test_idle_full_buckets_are_forgotten() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1, burst=2, clock=clock, max_keys=3)
    for key in "abc":
        limiter.allow(key)
    clock.now += 10
    limiter.allow("d")
    assert len(limiter) == 1


def test_a_cost_spends_that_many_tokens_and_is_capped_at_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1, burst=10, clock=clock)
    assert limiter.allow("a", cost=7)
    assert not limiter.allow("a", cost=4)
    assert limiter.allow("a", cost=3)
    clock.now += 10
    assert limiter.allow("a", cost=1000)  # never more than the burst: it can pass
    assert not limiter.allow("a")
