"""Group commit: write calls queued together share one transaction and one COMMIT.

Each test holds the storage thread, queues its calls, waits until all of
them are queued (no timing involved), then releases the thread: the calls
are then taken as one batch, which the tests check.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
import sqlcipher3
from storage_checks import (
    NO_PROBLEMS,
    apply_commit,
    delivery,
    make_group,
    payload_problems,
    payloads,
)

from qpq_proto.errors import EpochConflictError
from qpq_server._ops_queues import fan_out
from qpq_server._sqlcipher import SqlCipherStorage
from qpq_server._storage import Delivered, StoredKeyPackage
from qpq_server._storage_thread import MAX_BATCH_BYTES, MAX_BATCH_JOBS

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32
G = b"g"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlCipherStorage]:
    opened = await SqlCipherStorage.open(tmp_path / "qpq.db", "group-commit-key")
    await make_group(opened, G, (A, B, C), epoch=1)
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


def _send(store: SqlCipherStorage, sender: bytes, payload: bytes) -> Awaitable[Any]:
    return store.send_application(G, epoch=1, oldest_epoch=3, delivery=delivery(sender, payload))


class Broken(Exception):
    pass


def _fan_out_then_fail(cur: Any) -> None:
    # A job that queues a message for A and C, then fails: a savepoint must undo it.
    fan_out(cur, G, (A, C), delivery(B, b"x"))
    raise Broken


async def test_a_failing_job_fails_alone_and_the_rest_commit(store: SqlCipherStorage) -> None:
    results = await _one_batch(
        store,
        [
            _send(store, B, b"a1"),
            # This fan-out, its payload and A's and C's seqs are all undone.
            store._write(_fan_out_then_fail),
            apply_commit(store, G, 1, (A, B), delivery(C, b"c1")),
            # Same epoch as the commit accepted just before, in the same transaction.
            apply_commit(store, G, 1, (B, C), delivery(A, b"c2")),
            _send(store, B, b"a3"),
            store.ack(C, 1),
        ],
    )
    assert isinstance(results[1], Broken)
    assert isinstance(results[3], EpochConflictError)
    assert results[3].accepted_commit == hashlib.sha256(b"c1").digest()
    assert results[3].epoch == 2
    assert results[0] == (1, Delivered(seqs={A: 1, C: 1}, gaps=()))
    assert results[2] == Delivered(seqs={A: 2, B: 1}, gaps=())
    assert results[4] == (2, Delivered(seqs={A: 3, C: 2}, gaps=()))
    assert results[5] == 1
    assert await payloads(store, A) == [(1, b"a1"), (2, b"c1"), (3, b"a3")]
    assert await payloads(store, B) == [(1, b"c1")]
    assert await payloads(store, C) == [(2, b"a3")]
    assert await store.group_version(G) == (2, 0)
    assert await store._run(lambda: payload_problems(store._db.conn)) == NO_PROBLEMS


async def test_concurrent_commits_for_one_epoch_in_one_batch(store: SqlCipherStorage) -> None:
    commits = [b"commit-%d" % i for i in range(6)]
    results = await _one_batch(
        store, [apply_commit(store, G, 1, (A, B), delivery(C, p)) for p in commits]
    )
    accepted = [p for p, r in zip(commits, results, strict=True) if isinstance(r, Delivered)]
    assert accepted == [commits[0]]  # the first in arrival order
    for conflict in results[1:]:
        assert isinstance(conflict, EpochConflictError)
        assert conflict.accepted_commit == hashlib.sha256(commits[0]).digest()
    assert await payloads(store, A) == [(1, commits[0])]
    assert await payloads(store, B) == [(1, commits[0])]
    assert await store.accepted_commit(G, 1) == hashlib.sha256(commits[0]).digest()
    # The next epoch is still open, and the same epoch still is not.
    with pytest.raises(EpochConflictError):
        await apply_commit(store, G, 1, (A,), delivery(C, b"x"))
    await apply_commit(store, G, 2, (A,), delivery(C, b"y"))
    assert await store.group_version(G) == (3, 0)


async def test_claims_in_one_batch_stay_single_use(store: SqlCipherStorage) -> None:
    packages = [StoredKeyPackage(bytes([i]) * 8, bytes([i]) * 32, 10**10) for i in range(4)]
    await store.add_key_packages(A, packages, max_stored=10, max_bytes=1 << 20)
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
            _send(store, B, b"lost-1"),
            store._write(lambda cur: cur.execute("INSERT INTO child VALUES (1)")),
            apply_commit(store, G, 1, (B, C), delivery(A, b"p")),
        ],
    )
    assert all(isinstance(r, sqlcipher3.IntegrityError) for r in results), results
    assert not await store._run(lambda: conn.in_transaction)
    # Nothing of the batch was stored, so nothing may have been acknowledged:
    # the commit's state advance is gone together with its fan-out.
    for recipient in (A, B, C):
        assert await payloads(store, recipient) == []
    assert await store.group_version(G) == (1, 0)
    assert await store.accepted_commit(G, 1) is None
    assert await store.group_state(G) == ((1, 0), [(b"epoch", b"1")])
    assert await _send(store, B, b"kept") == (1, Delivered(seqs={A: 1, C: 1}, gaps=()))
    assert await apply_commit(store, G, 1, (B, C), delivery(A, b"p")) == Delivered(
        seqs={B: 1, C: 2}, gaps=()
    )
    assert await store.group_state(G) == ((2, 0), [(b"epoch", b"2")])


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
        write = asyncio.ensure_future(_send(store, B, b"m"))
        read = asyncio.ensure_future(payloads(store, A))
        await thread.queued(2)
    finally:
        thread.release()
    assert await write == (1, Delivered(seqs={A: 1, C: 1}, gaps=()))
    # The read was not run inside the batch's open transaction.
    assert await read in ([], [(1, b"m")])
    assert await store._run(lambda: store._db.conn.in_transaction) is False
