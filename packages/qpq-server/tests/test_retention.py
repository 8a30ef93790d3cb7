"""Every table shrinks back: what each deletion path removes, idle queues and groups,
old endpoints, and seqs that never go backwards across a removed queue row.

The store runs in-process, on a real SQLCipher file and on a real PostgreSQL
server in turn; time is passed in, so a test moves the clock by months
without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import OpenStore
from storage_checks import (
    NO_PROBLEMS,
    apply_commit,
    commit,
    delivery,
    make_group,
    rows,
    store_counts,
    store_problems,
)

from qpq_proto import Endpoint
from qpq_proto.errors import NotFoundError
from qpq_server._config import ServerConfig
from qpq_server._context import App
from qpq_server._metrics import Metrics
from qpq_server._migrations import MIGRATIONS
from qpq_server._notifier import DeliveryNotifier
from qpq_server._server import cleanup_round
from qpq_server._sqlcipher import SqlCipherStorage, _Database
from qpq_server._storage import (
    DAY_MS,
    Delivered,
    Retention,
    Storage,
    StoredEndpoints,
    StoredKeyPackage,
    Unused,
)

A, B, C, D = (bytes([n]) * 32 for n in b"abcd")
G = b"g"
KEY = "retention-test-key"
#: 2026-01-01 in unix milliseconds: the tests' clock starts here.
T0 = 1_767_225_600_000
RETENTION = Retention(group_idle_ms=400 * DAY_MS)
#: Tables that only account deletion and expiry empty (not acks).
_ACCOUNT_TABLES = ("usernames", "key_packages", "last_resort", "endpoints")
#: Tables whose rows go with the queue entries that hold them.
_QUEUE_TABLES = ("deliveries", "payloads", "queue_shares", "gaps", "queued_bytes")


@pytest.fixture
async def store(open_store: OpenStore) -> AsyncIterator[Storage]:
    """An open store, on each backend in turn."""
    opened = await open_store()
    yield opened
    await opened.close()


@pytest.fixture
async def sqlcipher_store(tmp_path: Path) -> AsyncIterator[SqlCipherStorage]:
    opened = await SqlCipherStorage.open(tmp_path / "qpq.db", KEY)
    yield opened
    await opened.close()


async def _counts(store: Storage) -> dict[str, int]:
    return await store_counts(store)


async def _problems(store: Storage) -> dict[str, int]:
    return await store_problems(store)


async def _send(
    store: Storage, group: bytes, sender: bytes, payload: bytes, **kw: int
) -> Delivered:
    _epoch, delivered = await store.send_application(
        group, epoch=0, oldest_epoch=3, delivery=delivery(sender, payload, **kw)
    )
    return delivered


async def _populate(store: Storage, now: int) -> None:
    """A little of everything: two groups, messages fanned out, a gap notice, a
    commit with a Welcome, KeyPackages, a last resort, usernames and endpoints."""
    await make_group(store, b"g1", (A, B, C), now_ms=now)
    await make_group(store, b"g2", (B, C), now_ms=now)
    for n in range(3):
        await _send(store, b"g1", A, b"m%d" % n, now_ms=now, expires_ms=now + DAY_MS, depth_cap=4)
    # C's queue is full now (three from A, one from B): the next gets a gap notice.
    await _send(store, b"g2", B, b"to c", now_ms=now, expires_ms=now + DAY_MS, depth_cap=4)
    delivered = await _send(
        store, b"g2", B, b"over", now_ms=now, expires_ms=now + DAY_MS, depth_cap=4
    )
    assert delivered.gaps == (C,)
    sent = delivery(A, b"commit", now_ms=now, expires_ms=now + DAY_MS, depth_cap=10)
    update = await store.apply_group_update(
        b"g1",
        commit(0, b"commit", (A, B, C, D)),
        recipients=(B, C),
        delivery=sent,
        welcome=(b"welcome", (D,)),
    )
    assert set(update.seqs) == {B, C, D}
    packages = [
        StoredKeyPackage(b"kp%d" % i, bytes([i]) * 32, now // 1000 + 3600) for i in range(3)
    ]
    await store.add_key_packages(D, packages, max_stored=10, max_bytes=1 << 20)
    await store.set_last_resort(D, StoredKeyPackage(b"lr", b"l" * 32, now // 1000 + 3600))
    for key, name in ((A, "alice"), (D, "dave")):
        await store.register_username(key, name, now_ms=now, cooldown_ms=30 * DAY_MS)
        await store.publish_endpoints(
            key, StoredEndpoints((Endpoint("192.0.2.1", 4433),), None), now
        )


@pytest.mark.parametrize("path", ["ack", "expiry", "account deletion"])
async def test_each_deletion_path_leaves_no_orphan_row(store: Storage, path: str) -> None:
    await _populate(store, T0)
    before = await _counts(store)
    assert all(before[table] for table in (*_QUEUE_TABLES, *_ACCOUNT_TABLES, "queues")), before
    people = (A, B, C, D)
    if path == "ack":
        for person in people:
            await store.ack(person, 2**62)
    elif path == "expiry":
        assert await store.expire(now_ms=T0 + DAY_MS, now_s=(T0 + DAY_MS) // 1000) == (
            before["deliveries"],
            4,
        )
    else:
        for person in people:
            await store.delete_account(person, now_ms=T0)
    after = await _counts(store)
    # Whatever held a queue entry went with it, on every path.
    assert {table: after[table] for table in _QUEUE_TABLES} == dict.fromkeys(_QUEUE_TABLES, 0)
    assert await _problems(store) == NO_PROBLEMS
    assert (await store.queue_stats()).messages == 0
    # The queue rows (of B, C and D: A received nothing) stay while their
    # seqs are recent; groups while in use.
    assert after["queues"] == 3
    assert await store.remove_unused(now_ms=T0 + DAY_MS, retention=RETENTION) == Unused()
    # Much later, nothing is left that anybody needs, whatever the path was.
    # (A deleted account's username is held for its owner, then released.)
    later = T0 + 401 * DAY_MS
    for person in people:
        await store.delete_account(person, now_ms=T0 + DAY_MS)
    await store.expire(now_ms=later, now_s=later // 1000)
    assert await store.remove_unused(now_ms=later, retention=RETENTION) == Unused(
        queues=3, groups=2, endpoints=0, username_holds=2
    )
    # What stays: each deleted account's row and its identity's, so that the
    # identity can never authenticate again (one row per account ever
    # registered), and the counter of account changes.
    counts = await _counts(store)
    tombstones = {"accounts": 4, "account_identities": 4, "account_version": 1}
    assert {table: counts.pop(table) for table in tombstones} == tombstones
    assert set(counts.values()) == {0}
    assert [
        bytes(key)
        for (key,) in await rows(
            store, "SELECT account_key FROM accounts WHERE status = 'deleted' ORDER BY account_key"
        )
    ] == [A, B, C, D]


async def test_old_endpoints_go(store: Storage) -> None:
    published = StoredEndpoints((Endpoint("192.0.2.1", 4433),), Endpoint("198.51.100.7", 5000))
    await store.publish_endpoints(A, published, T0)
    await store.publish_endpoints(B, published, T0 + 20 * DAY_MS)
    unused = await store.remove_unused(now_ms=T0 + 31 * DAY_MS, retention=RETENTION)
    assert unused == Unused(endpoints=1)
    assert await store.resolve_endpoints(A, requester=A) is None
    assert await store.resolve_endpoints(B, requester=B) == published


async def test_idle_groups_are_removed_with_all_their_rows(store: Storage) -> None:
    await make_group(store, b"quiet", (A, B), now_ms=T0)
    await make_group(store, b"chatty", (A, C), now_ms=T0)
    await make_group(store, b"changed", (A, D), now_ms=T0)
    await _send(store, b"chatty", A, b"hi", now_ms=T0 + 300 * DAY_MS)
    sent = delivery(A, b"c", now_ms=T0 + 350 * DAY_MS)
    await apply_commit(store, b"changed", 0, (D,), sent)
    for recipient in (C, D):
        await store.ack(recipient, 2**62)
    # Not yet: 400 days have not passed since any group's last use.
    unused = await store.remove_unused(now_ms=T0 + 399 * DAY_MS, retention=RETENTION)
    assert unused.groups == 0
    unused = await store.remove_unused(now_ms=T0 + 401 * DAY_MS, retention=RETENTION)
    assert unused.groups == 1
    assert await store.group_version(b"quiet") is None
    assert await store.group_members(b"quiet") is None
    assert await store.group_version(b"chatty") == (0, 0)
    assert await store.group_version(b"changed") == (1, 0)
    # Nothing of the removed group is left: state, roster, remembered commits.
    for table in ("group_state", "group_members"):
        left = await rows(
            store,
            f"SELECT count(*) FROM {table} WHERE group_id = ?",  # noqa: S608 - fixed names
            b"quiet",
        )
        assert left == [(0,)], table
    with pytest.raises(NotFoundError):
        await _send(store, b"quiet", A, b"anyone there?", now_ms=T0 + 402 * DAY_MS)
    # The others go too once nobody uses them either.
    unused = await store.remove_unused(now_ms=T0 + 751 * DAY_MS, retention=RETENTION)
    assert unused.groups == 2
    counts = await _counts(store)
    assert {t: counts[t] for t in ("groups", "group_state", "group_members", "group_commits")} == {
        "groups": 0,
        "group_state": 0,
        "group_members": 0,
        "group_commits": 0,
    }


async def test_many_idle_rows_go_in_bounded_batches(sqlcipher_store: SqlCipherStorage) -> None:
    store = sqlcipher_store
    recipients = [i.to_bytes(32, "big") for i in range(1, 2501)]
    await store._write(
        lambda cur: cur.executemany(
            "INSERT INTO queues (recipient, last_seq, depth) VALUES (?, ?, 0)",
            [(r, T0 * 1000) for r in recipients],
        )
    )
    batches = store._thread.stats.batches
    unused = await store.remove_unused(now_ms=T0 + 31 * DAY_MS, retention=RETENTION)
    assert unused.queues == 2500
    # 1000 rows per transaction, and the other five kinds' (empty) batches
    # (groups, endpoints, username holds, KeyPackage claim and account buckets).
    assert store._thread.stats.batches - batches == 3 + 5
    assert (await _counts(store))["queues"] == 0


async def test_a_busy_or_recent_queue_row_is_kept(store: Storage) -> None:
    await make_group(store, b"g1", (A, B, C))
    await make_group(store, b"g2", (A, B))
    await _send(store, b"g1", A, b"unread", now_ms=T0)  # B and C hold it
    await store.ack(C, 2**62)
    await _send(store, b"g2", B, b"recent", now_ms=T0 + 20 * DAY_MS)  # A holds it
    await store.ack(A, 2**62)
    # B's row is busy, A's recent, only C's is empty and idle.
    unused = await store.remove_unused(now_ms=T0 + 31 * DAY_MS, retention=RETENTION)
    assert unused.queues == 1
    queues = sorted(bytes(r[0]) for r in await rows(store, "SELECT recipient FROM queues"))
    assert queues == [A, B]


async def test_a_recreated_queue_row_never_hands_out_an_older_seq(
    store: Storage,
) -> None:
    await make_group(store, G, (A, B))
    busy = 1500  # more messages than microseconds in the millisecond they are sent
    sent = await asyncio.gather(
        *(_send(store, G, A, b"%d" % n, now_ms=T0, depth_cap=busy) for n in range(busy))
    )
    seen = [delivered.seqs[B] for delivered in sent]
    assert sorted(seen) == list(range(T0 * 1000, T0 * 1000 + busy))
    if store.backend == "sqlcipher":
        # One writer: the seqs follow the order of the calls too.
        assert seen == list(range(T0 * 1000, T0 * 1000 + busy))
    seen.sort()
    await store.ack(B, seen[-1])
    # Thirty days on, the row's last seq is still ahead of the cutoff by the
    # burst; one more millisecond and it is idle and goes.
    idle = T0 + 30 * DAY_MS
    assert await store.remove_unused(now_ms=idle + 1, retention=RETENTION) == Unused()
    assert await store.remove_unused(now_ms=idle + 2, retention=RETENTION) == Unused(queues=1)
    # The clock then steps back a day: the recreated row still starts above.
    back = T0 + 29 * DAY_MS
    seq = (await _send(store, G, A, b"after", now_ms=back)).seqs[B]
    assert seq == back * 1000 > seen[-1]
    # A step back within the row's life keeps counting up from the last seq.
    assert (await _send(store, G, A, b"earlier", now_ms=T0)).seqs[B] == seq + 1


async def test_seqs_only_go_up_under_random_acks_cleanups_and_clock_steps(
    store: Storage,
) -> None:
    rng = random.Random(5150)
    pairs = ((A, B), (B, C), (A, C))
    for pair in pairs:
        await make_group(store, b"".join(pair), pair)
    now = newest = T0
    keep_groups = Retention(group_idle_ms=100 * 365 * DAY_MS)
    last: dict[bytes, int] = {}
    removed = 0
    for _step in range(400):
        roll = rng.random()
        if roll < 0.35:
            sender, recipient = rng.sample(rng.choice(pairs), 2)
            group = b"".join(sorted((sender, recipient)))
            delivered = await _send(store, group, sender, b"x", now_ms=now, depth_cap=1000)
            seq = delivered.seqs[recipient]
            assert seq > last.get(recipient, 0), (recipient, seq, last)
            last[recipient] = seq
        elif roll < 0.65:
            person = rng.choice((A, B, C))
            await store.ack(person, last.get(person, 0))
        elif roll < 0.8:
            removed += (await store.remove_unused(now_ms=now, retention=keep_groups)).queues
        else:
            # Forward by up to 40 days, or back by 5, never to more than 25
            # days before the newest time seen: less than the idle period.
            step = rng.choice((1, 1000, DAY_MS, 10 * DAY_MS, 40 * DAY_MS, -5 * DAY_MS))
            if now + step < newest - 25 * DAY_MS:
                step = -step
            now += step
            newest = max(newest, now)
    assert removed >= 5  # rows really were removed and recreated along the way
    assert await _problems(store) == NO_PROBLEMS


async def test_schema_3_payloads_are_counted_towards_their_senders_quota(
    tmp_path: Path,
) -> None:
    path = tmp_path / "qpq.db"
    old = _Database(path, KEY, MIGRATIONS[:3])
    try:
        with old.transaction() as cur:
            cur.execute(
                "INSERT INTO groups (group_id, epoch, group_info, created_at_ms, updated_at_ms) "
                "VALUES (?, 0, ?, ?, ?)",
                (b"g", b"info", T0, T0 + 5),
            )
            cur.executemany(
                "INSERT INTO payloads (id, sender, payload, enqueued_at_ms, gap) "
                "VALUES (?, ?, ?, ?, ?)",
                [(1, A, b"12345", T0, 0), (2, A, b"123", T0, 0), (3, bytes(32), b"g", T0, 1)],
            )
            cur.executemany(
                "INSERT INTO deliveries (recipient, seq, payload_id, expires_at_ms, sender) "
                "VALUES (?, ?, ?, ?, ?)",
                [(B, 1, 1, T0 + DAY_MS, A), (C, 1, 2, T0 + DAY_MS, A), (C, 2, 3, T0, bytes(32))],
            )
            cur.executemany(
                "INSERT INTO queues (recipient, last_seq, depth) VALUES (?, ?, ?)",
                [(B, 1, 1), (C, 2, 2)],
            )
    finally:
        old.close()
    store = await SqlCipherStorage.open(path, KEY)
    try:
        queued = await store._run(
            lambda: store._db.conn.execute("SELECT sender, bytes FROM queued_bytes").fetchall()
        )
        assert [(bytes(s), n) for s, n in queued] == [(A, 8)]
        group = await store._run(
            lambda: store._db.conn.execute("SELECT used_at_ms, creator FROM groups").fetchone()
        )
        assert tuple(group) == (T0 + 5, None)
        await store.ack(B, 1)
        assert (
            await store._run(
                lambda: store._db.conn.execute("SELECT bytes FROM queued_bytes").fetchone()[0]
            )
            == 3
        )
        await store.ack(C, 2)
        assert (await _counts(store))["queued_bytes"] == 0
    finally:
        await store.close()


class _SteppedClock:
    """A wall clock the test sets (the App's clock, duck-typed)."""

    def __init__(self) -> None:
        self.now_ms = T0

    def wall_ms(self) -> int:
        return self.now_ms

    def monotonic(self) -> float:
        return self.now_ms / 1000


async def test_the_periodic_cleanup_counts_and_logs_what_it_removed(
    store: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = _SteppedClock()
    config = ServerConfig(data_dir=tmp_path, group_retention_days=10)
    app = App(config, store, DeliveryNotifier(), clock, "test", 0.0)  # type: ignore[arg-type]
    metrics = Metrics()
    await _populate(store, T0)
    for person in (B, C, D):
        await store.ack(person, 2**62)
    clock.now_ms = T0 + 31 * DAY_MS
    server_log = logging.getLogger("qpq_server")
    server_log.addHandler(caplog.handler)  # it may not propagate to the root
    try:
        with caplog.at_level(logging.INFO, logger="qpq_server"):
            removed = await cleanup_round(app, metrics)
    finally:
        server_log.removeHandler(caplog.handler)
    # The KeyPackages expired an hour after T0; B's, C's and D's queues are idle,
    # both groups unused for ten days, the endpoints a month old.
    assert removed == {
        "messages": 0,
        "key_packages": 4,
        "queues": 3,
        "groups": 2,
        "endpoints": 2,
        "username_holds": 0,
        "rate_limits": 0,
        "account_limits": 0,
    }
    for kind, count in removed.items():
        sample = metrics.registry.get_sample_value("qpq_cleanup_removed_total", {"kind": kind})
        assert sample == count
    logged = [r for r in caplog.records if r.getMessage() == "cleanup removed"]
    assert logged
    assert all(r.fields == removed for r in logged)  # type: ignore[attr-defined]
    assert await cleanup_round(app, metrics) == dict.fromkeys(removed, 0)
