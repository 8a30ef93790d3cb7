"""Token buckets per key (proven identity, source address), clock injected."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["RateLimiter", "TokenBucket"]


@dataclass(slots=True)
class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second; one per call."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens (at most the capacity) if there are that many."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated = now
        cost = min(cost, self.capacity)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def debit(self, now: float, cost: float) -> None:
        """Spend ``cost`` for work already done, into debt of at most one capacity."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = max(
            -self.capacity, min(self.capacity, self.tokens + elapsed * self.rate) - cost
        )
        self.updated = now

    def full_at(self, now: float) -> bool:
        """True when the bucket would be full at ``now`` (so it can be forgotten)."""
        return self.tokens + max(0.0, now - self.updated) * self.rate >= self.capacity


class RateLimiter:
    """One bucket per key, created full; idle full buckets are forgotten.

    Args:
        rate: tokens per second.
        burst: bucket capacity.
        clock: monotonic seconds (``time.monotonic`` in the server).
        max_keys: above this many buckets, full ones are pruned.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float],
        max_keys: int = 100_000,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[Hashable, TokenBucket] = {}

    def allow(self, key: Hashable, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens of ``key``'s bucket; False when it has fewer.

        A cost above the burst is charged as the whole burst, so every call
        can eventually pass.
        """
        now = self._clock()
        return self._bucket(key, now).take(now, cost)

    def debit(self, key: Hashable, cost: float) -> None:
        """Charge ``key`` for work already done (never refused): later calls wait it off."""
        now = self._clock()
        self._bucket(key, now).debit(now, cost)

    def _bucket(self, key: Hashable, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._prune(now)
            bucket = TokenBucket(self._rate, self._burst, self._burst, now)
            self._buckets[key] = bucket
        return bucket

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if b.full_at(now)]:
            del self._buckets[key]
