"""Group commit: write calls queued together share one transaction and one COMMIT.

Each test holds the storage thread, queues its calls, waits until all of
them are queued (no timing involved), then releases the thread: the calls
are then taken as one batch, which the tests check.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
import sqlcipher3
from storage_checks import NO_PROBLEMS, payload_problems

from qpq_proto.errors import EpochConflictError, QueueFullError
from qpq_server._sqlcipher import SqlCipherStorage
from qpq_server._storage import StoredKeyPackage
from qpq_server._storage_thread import MAX_BATCH_BYTES, MAX_BATCH_JOBS

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32
FAR = 10**13
COMMON: dict[str, Any] = {"now_ms": 1, "expires_ms": FAR, "depth_cap": 5}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlCipherStorage]:
    opened = await SqlCipherStorage.open(tmp_path / "qpq.db", "group-commit-key")
    yield opened
    await opened.close()


async def _one_batch(store: SqlCipherStorage, calls: list[Awaitable[Any]]) -> list[Any]:
    """Run ``calls`` as one write batch; return each result or exception."""
    thread = store._thread
    before = thread.stats.batches
    thread.hold()
    try:
        tasks = [asyncio.ensure_future(call) for call in calls]
        await thread.queued(len(tasks))
    finally:
        thread.release()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert thread.stats.batches == before + 1
    assert thread.stats.sizes[-1] == len(calls)
    return results


async def _payloads(store: SqlCipherStorage, recipient: bytes) -> list[tuple[int, bytes]]:
    fetched = await store.fetch(recipient, after_seq=0, limit=50, max_bytes=1 << 24, now_ms=1)
    return [(m.seq, m.payload) for m in fetched]


async def test_a_failing_job_fails_alone_and_the_rest_commit(store: SqlCipherStorage) -> None:
    await store.enqueue(C, B, b"fill", **{**COMMON, "depth_cap": 1})  # C's queue is now full
    results = await _one_batch(
        store,
        [
            store.enqueue(A, B, b"a1", **COMMON),
            # C is full: this publish, its commit epoch and A's seq are all undone.
            store.publish(
                b"g",
                epoch=1,
                is_commit=True,
                recipients=(A, C),
                sender=B,
                payload=b"x",
                **{**COMMON, "depth_cap": 1},
            ),
            store.publish(
                b"g", epoch=1, is_commit=True, recipients=(A, B), sender=C, payload=b"c1", **COMMON
            ),
            # Same epoch as the commit accepted just before, in the same transaction.
            store.publish(
                b"g", epoch=1, is_commit=True, recipients=(B,), sender=A, payload=b"c2", **COMMON
            ),
            store.enqueue(A, B, b"a3", **COMMON),
            store.ack(C, 1),
        ],
    )
    assert isinstance(results[1], QueueFullError)
    assert isinstance(results[3], EpochConflictError)
    assert results[0] == 1
    assert results[2] == {A: 2, B: 1}
    assert results[4] == 3
    assert results[5] == 1
    assert await _payloads(store, A) == [(1, b"a1"), (2, b"c1"), (3, b"a3")]
    assert await _payloads(store, B) == [(1, b"c1")]
    assert await _payloads(store, C) == []
    assert await store._run(lambda: payload_problems(store._db.conn)) == NO_PROBLEMS


async def test_concurrent_commits_for_one_epoch_in_one_batch(store: SqlCipherStorage) -> None:
    commits = [b"commit-%d" % i for i in range(6)]
    results = await _one_batch(
        store,
        [
            store.publish(
                b"grp", epoch=4, is_commit=True, recipients=(A, B), sender=C, payload=p, **COMMON
            )
            for p in commits
        ],
    )
    accepted = [p for p, r in zip(commits, results, strict=True) if isinstance(r, dict)]
    assert accepted == [commits[0]]  # the first in arrival order
    assert all(isinstance(r, EpochConflictError) for r in results[1:])
    assert await _payloads(store, A) == [(1, commits[0])]
    assert await _payloads(store, B) == [(1, commits[0])]
    # The next epoch is still open, and the same epoch still is not.
    with pytest.raises(EpochConflictError):
        await store.publish(
            b"grp", epoch=4, is_commit=True, recipients=(A,), sender=C, payload=b"x", **COMMON
        )
    await store.publish(
        b"grp", epoch=5, is_commit=True, recipients=(A,), sender=C, payload=b"y", **COMMON
    )


async def test_claims_in_one_batch_stay_single_use(store: SqlCipherStorage) -> None:
    packages = [StoredKeyPackage(bytes([i]) * 8, bytes([i]) * 32, 10**10) for i in range(4)]
    await store.add_key_packages(A, packages, max_stored=10)
    await store.set_last_resort(A, StoredKeyPackage(b"last", b"l" * 32, 10**10))
    results = await _one_batch(store, [store.claim_key_package(A, 0) for _ in range(10)])
    assert sorted(results[:4]) == sorted(p.package for p in packages)
    assert results[4:] == [b"last"] * 6
    assert await store.count_key_packages(A, 0) == (0, True)


async def test_a_failed_commit_fails_every_job_and_keeps_the_store_usable(
    store: SqlCipherStorage,
) -> None:
    # A deferred foreign key makes the COMMIT itself fail (as disk full would).
    conn = store._db.conn
    await store._run(lambda: conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
    await store._run(
        lambda: conn.execute(
            "CREATE TABLE child (pid INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
        )
    )
    results = await _one_batch(
        store,
        [
            store.enqueue(A, B, b"lost-1", **COMMON),
            store._write(lambda cur: cur.execute("INSERT INTO child VALUES (1)")),
            store.publish(
                b"g", epoch=1, is_commit=True, recipients=(B,), sender=A, payload=b"p", **COMMON
            ),
        ],
    )
    assert all(isinstance(r, sqlcipher3.IntegrityError) for r in results), results
    assert not await store._run(lambda: conn.in_transaction)
    # Nothing of the batch was stored, so nothing may have been acknowledged.
    assert await _payloads(store, A) == []
    assert await _payloads(store, B) == []
    assert await store.enqueue(A, B, b"kept", **COMMON) == 1
    assert await store.publish(
        b"g", epoch=1, is_commit=True, recipients=(B,), sender=A, payload=b"p", **COMMON
    ) == {B: 1}


async def test_batches_are_bounded_by_jobs_and_bytes(store: SqlCipherStorage) -> None:
    thread = store._thread
    count = MAX_BATCH_JOBS + 10
    thread.hold()
    try:
        tasks = [asyncio.ensure_future(store._write(lambda _cur, i=i: i)) for i in range(count)]
        big = MAX_BATCH_BYTES // 2 + 1
        tasks += [asyncio.ensure_future(store._write(lambda _cur: "big", big)) for _ in range(3)]
        await thread.queued(len(tasks))
    finally:
        thread.release()
    results = await asyncio.gather(*tasks)
    assert results == [*range(count), "big", "big", "big"]
    # 256 small; 10 small + one big; then each big alone (two exceed the budget).
    assert thread.stats.sizes[-4:] == [MAX_BATCH_JOBS, 11, 1, 1]


async def test_reads_see_only_committed_writes(store: SqlCipherStorage) -> None:
    thread = store._thread
    thread.hold()
    try:
        write = asyncio.ensure_future(store.enqueue(A, B, b"m", **COMMON))
        read = asyncio.ensure_future(_payloads(store, A))
        await thread.queued(2)
    finally:
        thread.release()
    assert await write == 1
    # The read was not run inside the batch's open transaction.
    assert await read in ([], [(1, b"m")])
    assert await store._run(lambda: store._db.conn.in_transaction) is False
