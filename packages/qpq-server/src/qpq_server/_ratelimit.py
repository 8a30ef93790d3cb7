"""Token buckets per key (proven identity, source address), clock injected.

:class:`RateLimiter` keeps its buckets in this process's memory: right for
source addresses, which each node sees for itself, and for identities when
one process serves the database. Where several nodes share one database, an
identity's bucket lives in the database (:class:`RateBuckets`) so that its
rate holds across nodes, and :class:`SharedRateLimiter` takes tokens from it
in small leases so that most calls cost no database round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "RateBuckets",
    "RateLimiter",
    "SharedRateLimiter",
    "TokenBucket",
    "debit_tokens",
    "take_tokens",
]


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


# ---- buckets shared by nodes ---------------------------------------------
#
# A shared bucket is stored as one number, ``full_at``: the time at which it
# will be full again (the "theoretical arrival time" of the generic cell rate
# algorithm). At time ``now`` it holds ``capacity - max(0, full_at - now) * rate``
# tokens; a row that is absent, or whose ``full_at`` has passed, is a full
# bucket, so rows can be deleted once ``full_at`` is in the past. The two
# functions below are the whole arithmetic; storage backends only read
# ``full_at`` under a row lock and write the result.


def take_tokens(
    full_at: float | None, now: float, want: float, rate: float, capacity: float
) -> tuple[float, float]:
    """Take up to ``want`` tokens from a bucket: ``(granted, new full_at)``.

    Grants what the bucket holds when it holds less than ``want`` (possibly
    nothing, when it is in debt).
    """
    start = now if full_at is None else max(full_at, now)
    held = capacity - (start - now) * rate
    granted = max(0.0, min(want, held))
    return granted, start + granted / rate


def debit_tokens(
    full_at: float | None, now: float, cost: float, rate: float, capacity: float
) -> float:
    """The new ``full_at`` after billing ``cost`` for work already done.

    Never refused: the bucket goes into debt of at most one capacity
    (``full_at`` at most two capacities' refill time ahead), as
    :meth:`TokenBucket.debit`.
    """
    start = now if full_at is None else max(full_at, now)
    return min(start + cost / rate, now + 2 * capacity / rate)


class RateBuckets(Protocol):
    """Token buckets kept in a database that several nodes share."""

    async def take_rate_tokens(
        self, key: bytes, want: float, rate: float, capacity: float
    ) -> float:
        """Take up to ``want`` tokens of ``key``'s bucket (see :func:`take_tokens`); how many."""
        ...

    async def debit_rate_tokens(
        self, key: bytes, cost: float, rate: float, capacity: float
    ) -> None:
        """Bill ``cost`` to ``key``'s bucket, into debt (see :func:`debit_tokens`)."""
        ...


#: Tokens a comparison forgives: ``full_at`` is a float of seconds since the
#: epoch (about 1e-7 s apart at today's dates), so sums of grants come back a
#: little short of whole tokens.
_SLACK = 1e-3


@dataclass(slots=True)
class _Lease:
    """Tokens this node took from a shared bucket and has not spent yet."""

    tokens: float
    #: Monotonic time after which unspent tokens are dropped.
    expires: float


class SharedRateLimiter:
    """Per-key limits that hold across nodes: buckets in the database, spent in leases.

    A call is admitted from this node's lease of its key when the lease holds
    enough; otherwise :meth:`take` asks the database for what the call needs
    plus one lease more. Every token spent was granted by the shared bucket,
    and a lease's tokens are dropped ``lease / rate`` seconds after they were
    taken, so in any window of ``w`` seconds all nodes together admit at
    most ``burst + rate * w + lease`` tokens of one key, however many nodes
    there are. Tokens leased on one node are unavailable to the others until
    spent or dropped: with ``n`` nodes the limit can be stricter by up to
    ``(n - 1) * lease`` tokens, never looser.

    Args:
        buckets: the database's buckets.
        rate: tokens per second.
        burst: bucket capacity.
        clock: monotonic seconds, for lease expiry (the buckets use the
            database's clock, which all nodes share).
        lease: tokens taken per database round trip beyond the call's need
            (default a tenth of the burst, at least one).
        max_keys: above this many leases, expired ones are pruned.
    """

    def __init__(
        self,
        buckets: RateBuckets,
        rate: float,
        burst: int,
        clock: Callable[[], float],
        *,
        lease: float | None = None,
        max_keys: int = 100_000,
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self._buckets = buckets
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._lease = min(self._burst, max(1.0, burst / 10) if lease is None else lease)
        self._lease_seconds = self._lease / rate
        self._max_keys = max_keys
        self._leases: dict[bytes, _Lease] = {}
        #: Keys whose shared bucket is known to be short until then (monotonic).
        self._empty_until: dict[bytes, float] = {}
        #: The round trip out for a key, done when its lease is refilled.
        self._refills: dict[bytes, asyncio.Future[None]] = {}

    def allow(self, key: bytes, cost: float = 1.0) -> bool:
        """Spend ``cost`` from this node's lease of ``key``; False when it holds too little.

        False is not a refusal: :meth:`take` then asks the database.
        """
        cost = min(cost, self._burst)
        lease = self._live(key, self._clock())
        if lease is None or lease.tokens + _SLACK < cost:
            return False
        lease.tokens = max(0.0, lease.tokens - cost)
        return True

    async def take(self, key: bytes, cost: float = 1.0) -> bool:
        """Spend ``cost`` of ``key``, taken from the shared bucket; False when it has too few.

        A cost above the burst is charged as the whole burst, so every call
        can eventually pass. One round trip per key is out at a time: calls
        of the key that arrive meanwhile wait for it and spend from the lease
        it brought, so many calls in flight cost one transaction, not one each.
        """
        cost = min(cost, self._burst)
        while (refill := self._refills.get(key)) is not None:
            # Shielded: a waiter that is cancelled must not cancel the refill.
            await asyncio.shield(refill)
            if self.allow(key, cost):
                return True
        now = self._clock()
        if self._empty_until.get(key, now) > now:
            return False
        refill = self._refills[key] = asyncio.get_running_loop().create_future()
        try:
            return await self._refill(key, cost, now)
        finally:
            del self._refills[key]
            refill.set_result(None)

    async def _refill(self, key: bytes, cost: float, now: float) -> bool:
        """Take ``cost`` plus a lease from the shared bucket, then spend ``cost``."""
        lease = self._live(key, now)
        held = 0.0 if lease is None else lease.tokens
        want = min(self._burst, max(0.0, cost - held) + self._lease)
        granted = await self._buckets.take_rate_tokens(key, want, self._rate, self._burst)
        # Re-read: a call of the key may have spent from the lease meanwhile.
        lease = self._live(key, now)
        if lease is None:
            lease = self._new_lease(key, now)
        elif lease.tokens <= 0:
            lease.expires = now + self._lease_seconds
        lease.tokens += granted
        if lease.tokens + _SLACK < cost:
            if granted + _SLACK < want:
                # The shared bucket gave all it had: it cannot hold the rest
                # sooner than its refill takes, so until then this node
                # refuses the key without asking the database again.
                self._remember_empty(key, now + (cost - lease.tokens) / self._rate)
            return False
        lease.tokens = max(0.0, lease.tokens - cost)
        return True

    async def debit(self, key: bytes, cost: float) -> None:
        """Bill ``key`` for work already done: from the lease, the rest to the shared bucket."""
        lease = self._live(key, self._clock())
        if lease is not None:
            spent = min(cost, lease.tokens)
            lease.tokens -= spent
            cost -= spent
        if cost > 0:
            await self._buckets.debit_rate_tokens(key, cost, self._rate, self._burst)

    def __len__(self) -> int:
        return len(self._leases)

    def _live(self, key: bytes, now: float) -> _Lease | None:
        lease = self._leases.get(key)
        if lease is not None and lease.expires <= now:
            del self._leases[key]
            return None
        return lease

    def _remember_empty(self, key: bytes, until: float) -> None:
        if len(self._empty_until) >= self._max_keys:
            now = self._clock()
            for known in [k for k, t in self._empty_until.items() if t <= now]:
                del self._empty_until[known]
        self._empty_until[key] = until

    def _new_lease(self, key: bytes, now: float) -> _Lease:
        if len(self._leases) >= self._max_keys:
            for stale in [k for k, v in self._leases.items() if v.expires <= now]:
                del self._leases[stale]
        # A lease that still holds tokens keeps their expiry when more are
        # added (the newer ones may go early: stricter, never looser).
        lease = _Lease(0.0, now + self._lease_seconds)
        self._leases[key] = lease
        return lease
