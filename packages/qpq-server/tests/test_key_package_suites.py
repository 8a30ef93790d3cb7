"""KeyPackages by ciphersuite: each is stored under its suite, a claim names the
suite and gets only that suite's (or its last resort), the count is per suite,
the claim limits stay per target whatever the suite, rows stored before suites
are the default suite's; and a commit adding a KeyPackage of another suite than
the group's is refused by the delivery service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import OpenStore
from groups import Member, build_group, forged_add, snapshot
from server_helpers import authed

import qpq_core
from qpq_core import Suite
from qpq_proto import (
    CountKeyPackages,
    FetchKeyPackage,
    MessageKind,
    Publish,
    SuiteKeyPackageCount,
    UploadKeyPackages,
    UploadLastResort,
)
from qpq_proto.errors import (
    InvalidArgumentError,
    NotFoundError,
    RateLimitedError,
    UnsupportedCiphersuiteError,
)
from qpq_server import _postgres
from qpq_server._engine import Txn
from qpq_server._migrations import MIGRATIONS, POSTGRES_MIGRATIONS
from qpq_server._postgres import PostgresStorage
from qpq_server._sqlcipher import SqlCipherStorage, _Database
from qpq_server._storage import ClaimLimits, KeyPackageStock, StoredKeyPackage
from qpq_server.testing import RunningServer

A, B = (bytes([n]) * 32 for n in b"ab")
NOW = 1_800_000_000
PQ = int(Suite.XWING)
LIMITS = ClaimLimits(target_burst=3, target_per_second=0.001, pair_burst=3, pair_per_second=0.001)


def stored(prefix: bytes, count: int, suite: int) -> list[StoredKeyPackage]:
    return [
        StoredKeyPackage(prefix + b"%02d" % i, prefix[:1] * 31 + bytes([i]), 10**10, suite)
        for i in range(count)
    ]


async def test_packages_are_claimed_and_counted_by_suite(open_store: OpenStore) -> None:
    store = await open_store()
    try:
        await store.add_key_packages(A, stored(b"d", 2, 1), max_stored=100, max_bytes=1 << 20)
        await store.add_key_packages(A, stored(b"q", 1, PQ), max_stored=100, max_bytes=1 << 20)
        await store.set_last_resort(A, StoredKeyPackage(b"last-q", b"l" * 32, 10**10, PQ))
        assert await store.key_package_stock(A, NOW) == (
            KeyPackageStock(1, 2, False, 0),
            KeyPackageStock(PQ, 1, True, 0),
        )
        # All suites together for the per-identity cap on uploads.
        assert await store.count_key_packages(A, NOW) == (3, True)
        pq = [await store.claim_key_package(A, NOW, ciphersuite=PQ) for _ in range(3)]
        assert pq == [b"q00", b"last-q", b"last-q"]
        default = [await store.claim_key_package(A, NOW) for _ in range(3)]
        assert default == [b"d00", b"d01", None]  # no last resort of the default suite
        assert await store.last_resort_served(A, PQ) == 2
        assert await store.last_resort_served(A) == 0
        # A last resort per suite: a default one does not replace the PQ one.
        await store.set_last_resort(A, StoredKeyPackage(b"last-d", b"m" * 32, 10**10))
        assert await store.claim_key_package(A, NOW) == b"last-d"
        assert await store.claim_key_package(A, NOW, ciphersuite=PQ) == b"last-q"
        assert await store.key_package_stock(A, NOW) == (
            KeyPackageStock(1, 0, True, 1),
            KeyPackageStock(PQ, 0, True, 3),
        )
        assert await store.key_package_stock(B, NOW) == ()
    finally:
        await store.close()


async def test_claim_limits_are_per_target_whatever_the_suite(open_store: OpenStore) -> None:
    store = await open_store()
    try:
        await store.add_key_packages(A, stored(b"d", 5, 1), max_stored=100, max_bytes=1 << 20)
        await store.add_key_packages(A, stored(b"q", 5, PQ), max_stored=100, max_bytes=1 << 20)
        got = []
        for suite in (1, PQ, 1):
            got.append(
                await store.claim_key_package(
                    A, NOW, ciphersuite=suite, claimer=bytes([suite]) * 32, limits=LIMITS
                )
            )
        assert got == [b"d00", b"q00", b"d01"]
        with pytest.raises(RateLimitedError):
            await store.claim_key_package(A, NOW, ciphersuite=PQ, claimer=B, limits=LIMITS)
    finally:
        await store.close()


def _schema_10_rows(txn: Txn) -> None:
    txn.execute(
        "INSERT INTO key_packages (identity_key, package, fingerprint, not_after) "
        "VALUES (?, ?, ?, ?)",
        (A, b"old-single-use", b"f" * 32, 10**10),
    )
    txn.execute(
        "INSERT INTO last_resort (identity_key, package, fingerprint, not_after, served) "
        "VALUES (?, ?, ?, ?, 4)",
        (A, b"old-last-resort", b"g" * 32, 10**10),
    )


async def _open_with_schema_10_rows(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """A store of schema 10 (before suites) holding a package and a last resort,
    then opened (migrated) by this server."""
    if request.param == "sqlcipher":
        path = tmp_path / "qpq.db"
        old = _Database(path, "k", MIGRATIONS[:10])
        try:
            with old.transaction() as txn:
                _schema_10_rows(txn)
        finally:
            old.close()
        return await SqlCipherStorage.open(path, "k")
    url = request.getfixturevalue("pg_url")
    with monkeypatch.context() as patch:
        patch.setattr(_postgres, "POSTGRES_MIGRATIONS", POSTGRES_MIGRATIONS[:10])
        old_store = await PostgresStorage.open(url)
    try:
        await old_store._write(_schema_10_rows)
    finally:
        await old_store.close()
    return await PostgresStorage.open(url)


@pytest.fixture(params=("sqlcipher", "postgresql"))
def backend(request: pytest.FixtureRequest) -> pytest.FixtureRequest:
    return request


async def test_packages_stored_before_suites_are_of_the_default_suite(
    backend: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert MIGRATIONS[9][0] == 10  # the last version before suites
    store = await _open_with_schema_10_rows(backend, tmp_path, monkeypatch)
    try:
        assert await store.key_package_stock(A, NOW) == (KeyPackageStock(1, 1, True, 4),)
        assert await store.claim_key_package(A, NOW, ciphersuite=PQ) is None
        assert await store.claim_key_package(A, NOW) == b"old-single-use"
        assert await store.claim_key_package(A, NOW) == b"old-last-resort"
        await store.set_last_resort(A, StoredKeyPackage(b"new-q", b"h" * 32, 10**10, PQ))
        assert await store.claim_key_package(A, NOW) == b"old-last-resort"
        assert await store.claim_key_package(A, NOW, ciphersuite=PQ) == b"new-q"
    finally:
        await store.close()


# ---- through a real server ---------------------------------------------------


async def test_a_server_stores_hands_out_and_counts_by_suite(server: RunningServer) -> None:
    owner = qpq_core.Identity.generate()
    mls = qpq_core.MlsClient(owner)
    async with authed(server, owner) as client:
        batch = (
            *mls.create_key_packages(2).packages,
            *mls.create_key_packages(1, suite=Suite.XWING).packages,
        )
        await client.call(UploadKeyPackages(packages=batch))
        (last,) = mls.create_key_packages(1, last_resort=True, suite=Suite.XWING).packages
        await client.call(UploadLastResort(package=last))
        count = await client.call(CountKeyPackages())
    assert (count.count, count.has_last_resort) == (2, False)
    assert count.suites == (
        SuiteKeyPackageCount(1, 2, False, 0),
        SuiteKeyPackageCount(PQ, 1, True, 0),
    )
    async with authed(server, qpq_core.Identity.generate()) as claimer:
        pq = [
            (await claimer.call(FetchKeyPackage(owner.public_key, ciphersuite=PQ))).package
            for _ in range(2)
        ]
        assert [qpq_core.validate_key_package(p).ciphersuite for p in pq] == [PQ, PQ]
        assert pq[1] == last
        # 0 (a client from before suites) and 0x0001 both mean the default suite.
        for suite in (0, 1):
            package = (await claimer.call(FetchKeyPackage(owner.public_key, suite))).package
            assert qpq_core.validate_key_package(package).ciphersuite == 1
        with pytest.raises(NotFoundError, match="ciphersuite 0x0001") as none_left:
            await claimer.call(FetchKeyPackage(owner.public_key))
        assert none_left.value.field == "identity_key"
        with pytest.raises(UnsupportedCiphersuiteError) as other:
            await claimer.call(FetchKeyPackage(owner.public_key, ciphersuite=2))
        assert other.value.field == "ciphersuite"


async def test_a_commit_adding_a_key_package_of_another_suite_is_refused(
    server: RunningServer,
) -> None:
    alice, bob = Member.generate(), Member.generate()
    group_id = await build_group(server, alice, bob)
    async with authed(server, alice.identity) as client:
        before = await snapshot(client, group_id)
        group_info = alice.mls.export_group_info(group_id)
        epoch = alice.epoch(group_id)

        def publish(key_package: bytes) -> Publish:
            return Publish(
                group_id=group_id,
                epoch=epoch,
                kind=MessageKind.COMMIT,
                payload=forged_add(group_info, alice.identity, 0, key_package),
                group_info=group_info,
            )

        # The same forgery with a KeyPackage of the group's suite gets past
        # MLS (framing, signature) to the GroupInfo check: only the suite
        # differs below.
        carol = qpq_core.MlsClient(qpq_core.Identity.generate())
        with pytest.raises(InvalidArgumentError) as same_suite:
            await client.call(publish(carol.create_key_packages(1).packages[0]))
        assert "GroupInfo" in same_suite.value.message, same_suite.value.message
        pq_package = carol.create_key_packages(1, suite=Suite.XWING).packages[0]
        with pytest.raises(InvalidArgumentError, match="iphersuite") as refused:
            await client.call(publish(pq_package))
        assert refused.value.field == "payload"
        after = await snapshot(client, group_id)
    assert (after.epoch, after.group_info) == (before.epoch, before.group_info)
