"""Nobody can drain an identity's KeyPackages: claims are limited per target and per
claimer, refused claims hand out nothing (the last resort neither), and the owner
sees how often its last-resort package went out.

The attack this guards against: a stranger claimed 101 of a victim's
KeyPackages in 0.4 s, so every invitation after that got the same
last-resort package. In-process stores (both backends, time passed in) pin
the arithmetic; real servers, one SQLCipher node and two PostgreSQL nodes on
one database, take the attack as it was made.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from conftest import OpenStore
from server_helpers import authed, key_packages

import qpq_core
from qpq_proto import CountKeyPackages, FetchKeyPackage, UploadKeyPackages, UploadLastResort
from qpq_proto.errors import NotFoundError, RateLimitedError
from qpq_server._postgres import PostgresStorage
from qpq_server._storage import ClaimLimits, Retention, StoredKeyPackage
from qpq_server.testing import RunningServer, ServerProcess, start_server

A, B, C = (bytes([n]) * 32 for n in b"abc")
CLAIMERS = [bytes([0xC0 + n]) * 32 for n in range(10)]
NOW = 1_800_000_000
#: A target bucket of 5 that refills one claim per 100 s; 3 per claimer per 1000 s.
LIMITS = ClaimLimits(target_burst=5, target_per_second=0.01, pair_burst=3, pair_per_second=0.003)
LAST = b"last-resort"
#: Only the claim limits stand in the way, not the per-call rate limit; the
#: per-target bucket is the default 20, refilled one claim per 5 s (the
#: default is one per 6 minutes) so that a test sees "later" come.
SERVER_ENV = {
    "QPQ_RATE_PER_SECOND": "100000",
    "QPQ_RATE_BURST": "100000",
    "QPQ_KEY_PACKAGE_CLAIMS_PER_HOUR": "720",
}
REFILL_SECONDS = 5.0
STRANGERS = 10


def stored(count: int) -> list[StoredKeyPackage]:
    return [StoredKeyPackage(b"kp%03d" % i, bytes([i]) * 32, 10**10) for i in range(count)]


async def stocked(open_store: OpenStore, count: int = 40) -> object:
    store = await open_store()
    await store.add_key_packages(A, stored(count), max_stored=1000, max_bytes=1 << 20)
    await store.set_last_resort(A, StoredKeyPackage(LAST, b"l" * 32, 10**10))
    return store


async def claim(store: object, claimer: bytes, now: int = NOW) -> bytes | RateLimitedError | None:
    try:
        return await store.claim_key_package(A, now, claimer=claimer, limits=LIMITS)  # type: ignore[attr-defined, no-any-return]
    except RateLimitedError as refused:
        return refused


# ---- the store: both backends, time passed in ---------------------------------


async def test_the_target_bucket_holds_whoever_claims(open_store: OpenStore) -> None:
    store = await stocked(open_store)
    try:
        results = [await claim(store, claimer) for claimer in CLAIMERS for _ in range(2)]
        served = [r for r in results if isinstance(r, bytes)]
        refused = [r for r in results if isinstance(r, RateLimitedError)]
        assert len(served) == LIMITS.target_burst
        assert LAST not in served  # refused claims are refused, never the last resort
        assert len(refused) == 2 * len(CLAIMERS) - LIMITS.target_burst
        assert {r.field for r in refused} == {"identity_key"}
        assert "claimed too often" in refused[0].message
        assert await store.count_key_packages(A, NOW) == (40 - LIMITS.target_burst, True)  # type: ignore[attr-defined]
        # The bucket refills with time: one claim per 1/rate seconds.
        assert isinstance(await claim(store, CLAIMERS[0], NOW + 99), RateLimitedError)
        assert isinstance(await claim(store, CLAIMERS[0], NOW + 100), bytes)
        assert isinstance(await claim(store, CLAIMERS[1], NOW + 100), RateLimitedError)
    finally:
        await store.close()  # type: ignore[attr-defined]


async def test_one_claimer_gets_its_share_and_others_still_theirs(open_store: OpenStore) -> None:
    store = await stocked(open_store)
    try:
        mine = [await claim(store, B) for _ in range(LIMITS.pair_burst + 1)]
        assert all(isinstance(r, bytes) for r in mine[:-1])
        assert isinstance(mine[-1], RateLimitedError)
        assert "you claimed" in mine[-1].message
        assert isinstance(await claim(store, C), bytes)  # the target's bucket had room
    finally:
        await store.close()  # type: ignore[attr-defined]


async def test_a_claim_that_finds_nothing_costs_nothing(open_store: OpenStore) -> None:
    store = await open_store()
    try:
        for _ in range(3 * LIMITS.target_burst):
            assert await claim(store, B) is None
        await store.add_key_packages(A, stored(10), max_stored=1000, max_bytes=1 << 20)
        served = [await claim(store, claimer) for claimer in CLAIMERS[:6]]
        assert [isinstance(r, bytes) for r in served] == [True] * 5 + [False]
    finally:
        await store.close()


async def test_the_last_resort_only_when_none_is_left_and_counted(open_store: OpenStore) -> None:
    store = await stocked(open_store, count=2)
    try:
        served = [await claim(store, claimer) for claimer in CLAIMERS[:4]]
        assert [s == LAST for s in served] == [False, False, True, True]
        assert await store.last_resort_served(A) == 2  # type: ignore[attr-defined]
        await store.set_last_resort(A, StoredKeyPackage(b"fresh", b"f" * 32, 10**10))  # type: ignore[attr-defined]
        assert await store.last_resort_served(A) == 0  # type: ignore[attr-defined]
        assert await store.last_resort_served(B) == 0  # type: ignore[attr-defined]
    finally:
        await store.close()  # type: ignore[attr-defined]


async def test_full_buckets_are_removed_by_the_cleanup(open_store: OpenStore) -> None:
    store = await stocked(open_store)
    try:
        await claim(store, B)
        retention = Retention(group_idle_ms=10**12)
        # Full again 100 s (target) and 333 s (pair) later: no row says the same.
        soon = await store.remove_unused(now_ms=(NOW + 50) * 1000, retention=retention)  # type: ignore[attr-defined]
        assert soon.key_package_claims == 0
        later = await store.remove_unused(now_ms=(NOW + 400) * 1000, retention=retention)  # type: ignore[attr-defined]
        assert later.key_package_claims == 2
    finally:
        await store.close()  # type: ignore[attr-defined]


async def test_claims_racing_through_two_nodes_share_one_bucket(pg_url: str) -> None:
    first = await PostgresStorage.open(pg_url)
    second = await PostgresStorage.open(pg_url)
    try:
        await first.add_key_packages(A, stored(40), max_stored=1000, max_bytes=1 << 20)
        claims = [claim(first if n % 2 else second, CLAIMERS[n % len(CLAIMERS)]) for n in range(30)]
        results = await asyncio.gather(*claims)
        served = [r for r in results if isinstance(r, bytes)]
        assert len(served) == LIMITS.target_burst
        assert len(set(served)) == len(served)
        assert await first.count_key_packages(A, NOW) == (40 - LIMITS.target_burst, False)
    finally:
        await first.close()
        await second.close()


# ---- the attack, against real servers -------------------------------------------


@contextlib.contextmanager
def sqlcipher_server(tmp_path: Path) -> Iterator[RunningServer]:
    with ServerProcess(tmp_path, extra_env=SERVER_ENV) as server:
        yield server


@contextlib.asynccontextmanager
async def victim_with_stock(server: RunningServer) -> AsyncIterator[qpq_core.Identity]:
    """A victim with what the qpq client keeps: 100 KeyPackages and a last resort."""
    victim = qpq_core.Identity.generate()
    mls = qpq_core.MlsClient(victim)
    async with authed(server, victim) as client:
        await client.call(UploadKeyPackages(packages=mls.create_key_packages(100).packages))
        (last,) = mls.create_key_packages(1, last_resort=True).packages
        await client.call(UploadLastResort(package=last))
    yield victim


async def drain(server: RunningServer, target: bytes, attempts: int) -> list[bytes | Exception]:
    """One stranger claiming as fast as it can; what each attempt got."""
    got: list[bytes | Exception] = []
    async with authed(server, qpq_core.Identity.generate()) as client:
        for _ in range(attempts):
            try:
                got.append((await client.call(FetchKeyPackage(identity_key=target))).package)
            except (RateLimitedError, NotFoundError) as refused:
                got.append(refused)
    return got


async def contact_invites(server: RunningServer, victim: qpq_core.Identity) -> bytes:
    """A contact's later invitation claims one package: which one did it get?

    Right after a drain the target's bucket is empty: the contact is told to
    try later (rateLimited), as the client tells its user, and does, once
    the bucket has refilled a claim.
    """
    async with authed(server, qpq_core.Identity.generate()) as client:
        for _ in range(3):
            try:
                claimed = await client.call(FetchKeyPackage(identity_key=victim.public_key))
            except RateLimitedError as refused:
                if refused.field != "identity_key":
                    raise
                await asyncio.sleep(REFILL_SECONDS)  # "later": the bucket's refill time
                continue
            return claimed.package  # type: ignore[no-any-return]
    raise AssertionError("the bucket never refilled")


def assert_drain_held(
    results: list[bytes | Exception], contact_package: bytes, seconds: float
) -> None:
    served = [r for r in results if isinstance(r, bytes)]
    refused = [r for r in results if not isinstance(r, bytes)]
    # The default bucket: 20 at once, whoever claims, and what refilled while
    # the attack ran; the rest refused, not served.
    assert len(served) <= 20 + seconds / REFILL_SECONDS + 1
    assert len(set(served)) == len(served)
    assert all(not qpq_core.validate_key_package(p).last_resort for p in served)
    assert refused
    assert all(isinstance(r, RateLimitedError) for r in refused)
    assert {r.field for r in refused if isinstance(r, RateLimitedError)} == {"identity_key"}
    # The contact who comes later still gets a single-use package.
    assert not qpq_core.validate_key_package(contact_package).last_resort


async def test_strangers_claiming_fast_leave_single_use_packages(tmp_path: Path) -> None:
    with sqlcipher_server(tmp_path) as server:
        async with victim_with_stock(server) as victim:
            started = time.monotonic()
            attacks = await asyncio.gather(
                *(drain(server, victim.public_key, 30) for _ in range(STRANGERS))
            )
            seconds = time.monotonic() - started
            results = [r for attack in attacks for r in attack]
            served = sum(isinstance(r, bytes) for r in results)
            # The victim's client sees the stock fall, and its last resort untouched.
            async with authed(server, victim) as client:
                count = await client.call(CountKeyPackages())
            assert (count.count, count.has_last_resort, count.last_resort_served) == (
                100 - served,
                True,
                0,
            )
            assert_drain_held(results, await contact_invites(server, victim), seconds)


async def test_one_stranger_gets_a_few_a_day(tmp_path: Path) -> None:
    with sqlcipher_server(tmp_path) as server:
        async with victim_with_stock(server) as victim:
            results = await drain(server, victim.public_key, 10)
            assert [isinstance(r, bytes) for r in results] == [True] * 4 + [False] * 6
            assert "you claimed" in str(results[-1])


async def test_the_last_resort_served_is_visible_to_its_owner(tmp_path: Path) -> None:
    with sqlcipher_server(tmp_path) as server:
        owner = qpq_core.Identity.generate()
        (last,) = key_packages(owner, 1, last_resort=True)
        async with authed(server, owner) as client:
            await client.call(UploadKeyPackages(packages=key_packages(owner, 1)))
            await client.call(UploadLastResort(package=last))
        got = [await contact_invites(server, owner) for _ in range(3)]
        assert got[1:] == [last, last]
        async with authed(server, owner) as client:
            count = await client.call(CountKeyPackages())
            assert (count.count, count.last_resort_served) == (0, 2)
            (fresh,) = key_packages(owner, 1, last_resort=True)
            await client.call(UploadLastResort(package=fresh))
            assert (await client.call(CountKeyPackages())).last_resort_served == 0


async def test_strangers_on_two_nodes_share_the_limit(tmp_path: Path, pg_url: str) -> None:
    env = {**SERVER_ENV, "QPQ_DATABASE_URL": pg_url}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    first = start_server(tmp_path / "a", extra_env=env, data_dir=tmp_path / "a" / "data")
    try:
        second = start_server(tmp_path / "b", extra_env=env, data_dir=tmp_path / "b" / "data")
        try:
            async with victim_with_stock(first) as victim:
                started = time.monotonic()
                attacks = await asyncio.gather(
                    *(drain(node, victim.public_key, 30) for node in (first, second) * 5)
                )
                seconds = time.monotonic() - started
                results = [r for attack in attacks for r in attack]
                assert_drain_held(results, await contact_invites(second, victim), seconds)
        finally:
            second.stop()
    finally:
        first.stop()
