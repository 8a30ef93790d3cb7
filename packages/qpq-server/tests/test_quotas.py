"""What one identity can make the server keep, and what waits for the database.

Per identity: the bytes of its messages not yet acknowledged (a fan-out's
payload counted once), its KeyPackages' bytes, the groups it created. Over
a quota the call is refused ``quotaExceeded`` and nothing is stored; it
succeeds again once recipients acknowledged, packages were claimed or
groups expired. Write calls waiting for the storage thread are bounded by
a budget: one more is refused ``unavailable`` at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import OpenStore
from groups import (
    application,
    build_group,
    claim,
    connections,
    create_group,
    drain,
    members,
    plaintexts,
    process,
    publish_commit,
    receive,
    snapshot,
)
from server_helpers import authed
from storage_checks import (
    NO_PROBLEMS,
    apply_commit,
    delivery,
    make_group,
    payloads,
    store_counts,
    store_problems,
)

from qpq_proto import UploadKeyPackages
from qpq_proto.errors import EpochConflictError, QuotaExceededError, UnavailableError
from qpq_server._sqlcipher import SqlCipherStorage
from qpq_server._storage import DAY_MS, Delivered, Retention, Storage, StoredKeyPackage
from qpq_server.testing import ServerProcess

A, B, C = (bytes([n]) * 32 for n in b"abc")
G = b"g"
KEY = "quota-test-key"
NO_RATE_LIMIT = {"QPQ_RATE_PER_SECOND": "100000", "QPQ_RATE_BURST": "100000"}


@pytest.fixture
async def store(open_store: OpenStore) -> AsyncIterator[Storage]:
    """An open store with a 1000-byte write budget, on each backend in turn."""
    opened = await open_store(budget_bytes=1000)
    yield opened
    await opened.close()


@pytest.fixture
async def sqlcipher_store(tmp_path: Path) -> AsyncIterator[SqlCipherStorage]:
    opened = await SqlCipherStorage.open(tmp_path / "qpq.db", KEY, budget_bytes=1000)
    yield opened
    await opened.close()


async def _counts(store: Storage) -> dict[str, int]:
    return await store_counts(store)


async def _send(store: Storage, sender: bytes, payload: bytes, quota: int) -> Delivered:
    _epoch, delivered = await store.send_application(
        G, epoch=0, oldest_epoch=3, delivery=delivery(sender, payload, quota_bytes=quota)
    )
    return delivered


async def test_queued_bytes_count_a_fan_out_once_and_free_up_with_the_last_ack(
    store: Storage,
) -> None:
    await make_group(store, G, (A, B, C))
    assert (await _send(store, A, b"123456", quota=10)).seqs == {B: 1, C: 1}
    before = await _counts(store)
    with pytest.raises(QuotaExceededError) as refused:
        await _send(store, A, b"654321", quota=10)
    assert refused.value.field == "payload"
    assert "10 bytes" in refused.value.message
    # Nothing of the refused publish was stored, not even a seq.
    assert await _counts(store) == before
    # Another sender has a quota of its own.
    assert (await _send(store, B, b"from b", quota=10)).seqs == {A: 1, C: 2}
    await store.ack(B, 1)
    with pytest.raises(QuotaExceededError):  # C still holds the payload
        await _send(store, A, b"654321", quota=10)
    await store.ack(C, 1)
    assert (await _send(store, A, b"654321", quota=10)).seqs == {B: 2, C: 3}
    # One payload is never more than the quota, whoever has room.
    with pytest.raises(QuotaExceededError):
        await _send(store, C, b"x" * 11, quota=10)
    assert await store_problems(store) == NO_PROBLEMS


async def test_a_commit_over_the_quota_changes_nothing(store: Storage) -> None:
    await make_group(store, G, (A, B, C), epoch=3)
    await _send(store, A, b"12345678", quota=10)
    state = await store.group_state(G)
    with pytest.raises(QuotaExceededError):
        await apply_commit(store, G, 3, (B, C), delivery(A, b"commit", quota_bytes=10))
    assert await store.group_state(G) == state
    assert await store.accepted_commit(G, 3) is None
    # A gap notice is the server's own: it is not charged to anybody.
    full = delivery(B, b"x", depth_cap=1, quota_bytes=0)
    assert await apply_commit(store, G, 3, (C,), full) == Delivered(seqs={}, gaps=(C,))
    await store.ack(B, 2**62)
    await store.ack(C, 2**62)
    await apply_commit(store, G, 4, (B, C), delivery(A, b"commit", quota_bytes=10))
    with pytest.raises(EpochConflictError):
        await apply_commit(store, G, 4, (B, C), delivery(A, b"commit", quota_bytes=10))


async def test_key_package_bytes_are_capped_and_free_up_when_claimed(
    store: Storage,
) -> None:
    def packages(*sizes: int) -> list[StoredKeyPackage]:
        return [StoredKeyPackage(bytes([n]) * n, bytes([n]) * 32, 10**10) for n in sizes]

    await store.add_key_packages(A, packages(40, 50), max_stored=10, max_bytes=100)
    with pytest.raises(QuotaExceededError) as refused:
        await store.add_key_packages(A, packages(11, 1), max_stored=10, max_bytes=100)
    assert refused.value.field == "packages"
    assert await store.count_key_packages(A, 0) == (2, False)
    assert await store.claim_key_package(A, 0) == bytes([40]) * 40
    await store.add_key_packages(A, packages(11, 1), max_stored=10, max_bytes=100)
    assert await store.count_key_packages(A, 0) == (3, False)


async def test_groups_created_are_capped_until_unused_ones_go(store: Storage) -> None:
    async def create(group_id: bytes, now_ms: int) -> None:
        await store.create_group(
            group_id,
            creator=A,
            epoch=0,
            members=(A,),
            state=(),
            group_info=b"info",
            now_ms=now_ms,
            max_created=2,
        )

    await create(b"one", 0)
    await create(b"two", 300 * DAY_MS)
    with pytest.raises(QuotaExceededError) as refused:
        await create(b"three", 300 * DAY_MS)
    assert refused.value.field == "group_info"
    assert await store.group_version(b"three") is None
    # Somebody else's count is their own.
    await make_group(store, b"theirs", (B,))
    retention = Retention(group_idle_ms=400 * DAY_MS)
    assert (await store.remove_unused(now_ms=401 * DAY_MS, retention=retention)).groups == 2
    await create(b"three", 401 * DAY_MS)


async def test_writes_beyond_the_budget_are_refused_at_once(
    sqlcipher_store: SqlCipherStorage,
) -> None:
    store = sqlcipher_store
    await make_group(store, G, (A, B))
    thread = store._thread
    thread.hold()
    try:
        first = asyncio.ensure_future(_send(store, A, bytes(600), quota=1 << 20))
        await thread.queued(1)
        # 600 bytes wait; 600 more would be over the 1000-byte budget.
        with pytest.raises(UnavailableError):
            await _send(store, B, bytes(600), quota=1 << 20)
        assert thread.stats.refused == 1
        # Jobs without a payload (an ack, a read) are not held back.
        second = asyncio.ensure_future(store.ack(B, 0))
        await thread.queued(2)
    finally:
        thread.release()
    assert (await first).seqs == {B: 1}
    assert await second == 0
    assert thread.pending_bytes == 0
    # Nothing of the refused one was stored; the same call now goes through,
    # and one call larger than the whole budget passes when nothing waits.
    assert await payloads(store, A) == []
    assert (await _send(store, B, bytes(600), quota=1 << 20)).seqs == {A: 1}
    assert (await _send(store, B, bytes(5000), quota=1 << 20)).seqs == {A: 2}


async def test_quotas_through_a_server(tmp_path: Path) -> None:
    env = {
        **NO_RATE_LIMIT,
        "QPQ_QUOTA_QUEUED_BYTES": "2500",
        "QPQ_QUOTA_KEY_PACKAGE_BYTES": "1000",
        "QPQ_QUOTA_GROUPS_CREATED": "2",
    }
    with ServerProcess(tmp_path, extra_env=env) as server:
        alice, bob, carol = members(3)
        group_id = await build_group(server, alice, bob)
        async with connections(server, alice, bob) as (a, b):
            # 1146 bytes each: two fit in 2500 bytes, a third does not.
            sent = [await a.call(application(alice, group_id, bytes(1000))) for _ in range(2)]
            assert [p.recipients for p in sent] == [1, 1]
            with pytest.raises(QuotaExceededError):
                await a.call(application(alice, group_id, bytes(1000)))
            # Nor does a commit (506 bytes): the group stays where it was.
            with pytest.raises(QuotaExceededError):
                await publish_commit(a, alice, alice.mls.self_update(group_id))
            assert (await snapshot(a, group_id)).epoch == 1
            queued = await drain(b)
            assert len(queued) == 2  # nothing of the refused calls was queued
            # (the third message's ratchet step is lost to bob: MLS skips it)
            assert plaintexts(process(bob, queued)) == [bytes(1000)] * 2
            await publish_commit(a, alice, alice.mls.self_update(group_id))
            await a.call(application(alice, group_id, b"and on"))
            assert plaintexts(await receive(b, bob)) == [b"and on"]
            assert alice.exporter(group_id) == bob.exporter(group_id)
        async with authed(server, carol.identity) as c:
            await c.call(UploadKeyPackages(packages=carol.key_packages(3)))  # 918 bytes
            with pytest.raises(QuotaExceededError):
                await c.call(UploadKeyPackages(packages=carol.key_packages(1)))
            await claim(c, carol.key)
            await c.call(UploadKeyPackages(packages=carol.key_packages(1)))
            await create_group(c, carol)
            await create_group(c, carol)
            with pytest.raises(QuotaExceededError):
                await create_group(c, carol)
