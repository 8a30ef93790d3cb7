"""Token buckets with an injected clock."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from qpq_server._ratelimit import RateLimiter, SharedRateLimiter, debit_tokens, take_tokens


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


# ---- buckets shared by nodes ---------------------------------------------


def test_take_tokens_grants_what_the_bucket_holds() -> None:
    # An absent bucket is full: 10 tokens, 2 per second.
    granted, full_at = take_tokens(None, 100.0, 4, rate=2, capacity=10)
    assert (granted, full_at) == (4, 102.0)  # 4 tokens refill in 2 s
    granted, full_at = take_tokens(full_at, 100.0, 100, rate=2, capacity=10)
    assert (granted, full_at) == (6, 105.0)  # only the 6 left; empty until 105
    assert take_tokens(full_at, 100.0, 5, rate=2, capacity=10) == (0, 105.0)
    assert take_tokens(full_at, 101.5, 5, rate=2, capacity=10) == (3, 106.5)
    # Long after it was full, it is full: never more than the capacity.
    assert take_tokens(105.0, 1000.0, 50, rate=2, capacity=10) == (10, 1005.0)


def test_debit_tokens_goes_into_debt_of_at_most_one_capacity() -> None:
    full_at = debit_tokens(None, 100.0, 30, rate=2, capacity=10)
    assert full_at == 110.0  # two capacities' refill: -10 tokens now
    assert take_tokens(full_at, 100.0, 1, rate=2, capacity=10) == (0, 110.0)
    assert take_tokens(full_at, 108.0, 5, rate=2, capacity=10) == (5, 112.5)


class MemoryBuckets:
    """The shared buckets' arithmetic over a dict (the database keeps ``full_at`` so)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.full_at: dict[bytes, float] = {}
        self.granted = 0.0
        self.round_trips = 0

    async def take_rate_tokens(
        self, key: bytes, want: float, rate: float, capacity: float
    ) -> float:
        self.round_trips += 1
        granted, self.full_at[key] = take_tokens(
            self.full_at.get(key), self.clock.now, want, rate, capacity
        )
        self.granted += granted
        return granted

    async def debit_rate_tokens(
        self, key: bytes, cost: float, rate: float, capacity: float
    ) -> None:
        self.round_trips += 1
        self.full_at[key] = debit_tokens(
            self.full_at.get(key), self.clock.now, cost, rate, capacity
        )


async def admit(limiter: SharedRateLimiter, key: bytes, cost: float = 1.0) -> bool:
    return limiter.allow(key, cost) or await limiter.take(key, cost)


async def test_nodes_sharing_buckets_admit_one_burst_not_one_each() -> None:
    clock = FakeClock()
    buckets = MemoryBuckets(clock)
    nodes = [SharedRateLimiter(buckets, rate=1, burst=100, clock=clock) for _ in range(3)]
    admitted = [await admit(nodes[i % 3], b"id") for i in range(300)]
    # Each of three in-memory limiters would have admitted 100.
    assert sum(admitted) <= 100
    # Leases stranded on the other nodes make it stricter by at most two leases.
    assert sum(admitted) >= 100 - 2 * 10
    # Leases spare the database: about one round trip per lease, not per
    # call, and a node that found the bucket empty does not ask again
    # before it can have refilled.
    assert buckets.round_trips <= 100 / 10 + 3
    assert await admit(nodes[0], b"other")  # keys are independent


class GatedBuckets(MemoryBuckets):
    """Shared buckets whose round trips wait until the test opens the gate."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def take_rate_tokens(
        self, key: bytes, want: float, rate: float, capacity: float
    ) -> float:
        self.waiting.set()
        await self.gate.wait()
        return await super().take_rate_tokens(key, want, rate, capacity)


async def test_calls_in_flight_for_one_key_share_one_round_trip() -> None:
    clock = FakeClock()
    buckets = GatedBuckets(clock)
    node = SharedRateLimiter(buckets, rate=1, burst=100, clock=clock)
    calls = [asyncio.ensure_future(admit(node, b"id")) for _ in range(8)]
    await buckets.waiting.wait()
    calls.append(asyncio.ensure_future(admit(node, b"other")))  # another key is not held up
    buckets.gate.set()
    assert all(await asyncio.gather(*calls))
    # One transaction for the 8 calls of b"id" (1 + a lease of 10), one for b"other".
    assert buckets.round_trips == 2
    # A waiter cancelled while the round trip is out leaves it to finish for the others.
    buckets.gate.clear()
    buckets.waiting.clear()
    clock.now += 1000  # the leases expired
    first = asyncio.ensure_future(admit(node, b"id"))
    await buckets.waiting.wait()
    second = asyncio.ensure_future(admit(node, b"id"))
    cancelled = asyncio.ensure_future(admit(node, b"id"))
    await asyncio.sleep(0)  # one loop turn: each new task runs to its first wait
    assert not second.done()
    assert not cancelled.done()
    cancelled.cancel()
    buckets.gate.set()
    assert await first
    assert await second
    assert cancelled.cancelled()
    assert buckets.round_trips == 3


async def test_a_single_node_gets_the_whole_burst_then_the_rate() -> None:
    clock = FakeClock()
    node = SharedRateLimiter(MemoryBuckets(clock), rate=10, burst=100, clock=clock)
    assert [await admit(node, b"id") for _ in range(101)].count(True) == 100
    clock.now += 0.05  # half a token: the database is not asked
    calls = node._buckets.round_trips  # type: ignore[attr-defined]
    assert not await admit(node, b"id")
    assert node._buckets.round_trips == calls  # type: ignore[attr-defined]
    clock.now += 0.95  # 10 tokens refilled
    assert sum([await admit(node, b"id") for _ in range(20)]) == 10


async def test_leases_left_on_other_nodes_do_not_add_to_a_later_burst() -> None:
    clock = FakeClock()
    buckets = MemoryBuckets(clock)
    nodes = [SharedRateLimiter(buckets, rate=1, burst=100, clock=clock) for _ in range(4)]
    for node in nodes:  # each node now holds most of a lease (10 tokens)
        assert await admit(node, b"id")
    clock.now += 1000  # the shared bucket is full again
    burst = [await admit(nodes[i % 4], b"id") for i in range(400)]
    # Unspent leases are dropped: the burst is the bucket's, not 100 + 4 leases.
    assert sum(burst) <= 100 + 10


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 3), st.floats(0, 0.5), st.sampled_from([1.0, 1.0, 3.0, 40.0])),
        min_size=1,
        max_size=300,
    )
)
async def test_no_window_admits_more_than_burst_plus_rate_plus_one_lease(
    steps: list[tuple[int, float, float]],
) -> None:
    """Whatever the nodes and timing: in any window of w seconds, at most
    burst + rate * w + lease tokens are admitted across all nodes."""
    rate, burst = 20.0, 50
    clock = FakeClock()
    buckets = MemoryBuckets(clock)
    nodes = [SharedRateLimiter(buckets, rate=rate, burst=burst, clock=clock) for _ in range(4)]
    lease = burst / 10
    spent: list[tuple[float, float]] = []
    for node, pause, cost in steps:
        clock.now += pause
        if await admit(nodes[node], b"id", cost):
            spent.append((clock.now, min(cost, burst)))
    assert sum(c for _, c in spent) <= buckets.granted
    for i, (start, _) in enumerate(spent):
        total = 0.0
        for end, cost in spent[i:]:
            total += cost
            assert total <= burst + rate * (end - start) + lease + 1e-9
