"""A payload is stored once per enqueue or publish and freed with its last queue row."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from storage_checks import NO_PROBLEMS, payload_problems

from qpq_proto.errors import EpochConflictError, QueueFullError
from qpq_server import StorageError
from qpq_server._migrations import MIGRATIONS
from qpq_server._sqlcipher import SqlCipherStorage, _Database

KEY = "payload-test-key"
FAR = 10**13
A, B, C, D = (bytes([n]) * 32 for n in b"abcd")


async def _problems(store: SqlCipherStorage) -> dict[str, int]:
    return await store._run(lambda: payload_problems(store._db.conn))


_COUNTS = {
    table: f"SELECT count(*) FROM {table}"  # noqa: S608 - fixed table names
    for table in ("payloads", "deliveries")
}


async def _count(store: SqlCipherStorage, table: str) -> int:
    row = await store._run(lambda: store._db.conn.execute(_COUNTS[table]).fetchone())
    return int(row[0])


async def test_a_publish_stores_its_payload_once_until_the_last_ack(tmp_path: Path) -> None:
    store = await SqlCipherStorage.open(tmp_path / "qpq.db", KEY)
    try:
        payload = os.urandom(200_000)
        common = {"sender": D, "now_ms": 1, "expires_ms": FAR, "depth_cap": 10}
        seqs = await store.publish(
            b"g", epoch=0, is_commit=False, recipients=(A, B, C), payload=payload, **common
        )
        assert seqs == {A: 1, B: 1, C: 1}
        assert (await _count(store, "payloads"), await _count(store, "deliveries")) == (1, 3)
        # The payload's bytes are in the database once, not once per recipient.
        (stored,) = await store._run(
            lambda: store._db.conn.execute("SELECT sum(length(payload)) FROM payloads").fetchone()
        )
        assert stored == len(payload)
        for recipient in (A, B, C):
            (envelope,) = await store.fetch(
                recipient, after_seq=0, limit=5, max_bytes=1 << 20, now_ms=1
            )
            assert (envelope.payload, envelope.sender, envelope.enqueued_at_ms) == (payload, D, 1)
        assert await store.ack(A, 1) == 1
        assert await store.ack(B, 1) == 1
        assert await _count(store, "payloads") == 1  # C still holds it
        assert await store.ack(C, 1) == 1
        assert await _count(store, "payloads") == 0
        # A publish to nobody stores nothing (nothing would ever free it).
        assert (
            await store.publish(
                b"g", epoch=1, is_commit=True, recipients=(), payload=b"x", **common
            )
            == {}
        )
        assert await _count(store, "payloads") == 0
        assert await _problems(store) == NO_PROBLEMS
    finally:
        await store.close()


class _Model:
    """What the queues must contain, kept in Python beside the database."""

    def __init__(self) -> None:
        self.queues: dict[
            bytes, dict[int, tuple[int, bytes, int]]
        ] = {}  # seq -> (id, payload, exp)
        self.last_seq: dict[bytes, int] = {}
        self.epochs: dict[bytes, int] = {}
        self.next_id = 0

    def depth(self, recipient: bytes) -> int:
        return len(self.queues.get(recipient, {}))

    def deliver(
        self, recipients: tuple[bytes, ...], payload: bytes, expires: int
    ) -> dict[bytes, int]:
        self.next_id += 1
        seqs = {}
        for r in recipients:
            seq = self.last_seq.get(r, 0) + 1
            self.last_seq[r] = seq
            self.queues.setdefault(r, {})[seq] = (self.next_id, payload, expires)
            seqs[r] = seq
        return seqs

    def live_payloads(self) -> int:
        return len({entry[0] for queue in self.queues.values() for entry in queue.values()})


async def test_mixed_workload_never_leaks_or_dangles_a_payload(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    people = (A, B, C, D)
    cap = 6
    model = _Model()
    now = 1_000_000
    store = await SqlCipherStorage.open(tmp_path / "qpq.db", KEY)
    outcomes: dict[str, int] = {}
    try:
        for _step in range(300):
            op = rng.random()
            payload = os.urandom(rng.choice((16, 3000, 9000)))
            expires = now + rng.choice((50, 500, 5000))
            common = {"payload": payload, "now_ms": now, "expires_ms": expires, "depth_cap": cap}
            if op < 0.45:
                group = rng.choice((b"g1", b"g2"))
                is_commit = rng.random() < 0.3
                epoch = rng.randint(0, 6)
                recipients = tuple(rng.sample(people, rng.randint(0, 4)))
                expected: type[Exception] | None = None
                if is_commit and model.epochs.get(group, -1) >= epoch:
                    expected = EpochConflictError
                elif any(model.depth(r) >= cap for r in recipients):
                    expected = QueueFullError
                call = store.publish(
                    group,
                    epoch=epoch,
                    is_commit=is_commit,
                    recipients=recipients,
                    sender=D,
                    **common,
                )
                if expected is None:
                    seqs = await call
                    if is_commit:
                        model.epochs[group] = epoch
                    assert seqs == model.deliver(recipients, payload, expires)
                else:
                    with pytest.raises(expected):
                        await call
                name = "publish" if expected is None else expected.__name__
            elif op < 0.6:
                recipient = rng.choice(people)
                if model.depth(recipient) >= cap:
                    with pytest.raises(QueueFullError):
                        await store.enqueue(recipient, A, **common)
                    name = "QueueFullError"
                else:
                    seq = await store.enqueue(recipient, A, **common)
                    assert {recipient: seq} == model.deliver((recipient,), payload, expires)
                    name = "enqueue"
            elif op < 0.8:
                recipient = rng.choice(people)
                up_to = rng.randint(0, model.last_seq.get(recipient, 0) + 1)
                queue = model.queues.get(recipient, {})
                gone = [seq for seq in queue if seq <= up_to]
                assert await store.ack(recipient, up_to) == len(gone)
                for seq in gone:
                    del queue[seq]
                name = "ack"
            elif op < 0.92:
                now += rng.choice((10, 100, 1000))
                removed, _packages = await store.expire(now_ms=now, now_s=now // 1000)
                expired = 0
                for queue in model.queues.values():
                    for seq in [s for s, entry in queue.items() if entry[2] <= now]:
                        del queue[seq]
                        expired += 1
                assert removed == expired
                name = "expire"
            else:
                recipient = rng.choice(people)
                await store.delete_account(recipient, now_ms=now)
                model.queues.pop(recipient, None)
                name = "delete_account"
            outcomes[name] = outcomes.get(name, 0) + 1
            assert await _problems(store) == NO_PROBLEMS, name
            assert await _count(store, "payloads") == model.live_payloads(), name
        for recipient in people:
            fetched = await store.fetch(
                recipient, after_seq=0, limit=100, max_bytes=1 << 24, now_ms=now
            )
            queue = model.queues.get(recipient, {})
            expected_seqs = sorted(s for s, entry in queue.items() if entry[2] > now)
            assert [m.seq for m in fetched] == expected_seqs
            assert [m.payload for m in fetched] == [queue[s][1] for s in expected_seqs]
    finally:
        await store.close()
    # The workload really exercised every path, both outcomes included.
    assert set(outcomes) == {
        "publish",
        "enqueue",
        "ack",
        "expire",
        "delete_account",
        "EpochConflictError",
        "QueueFullError",
    }, outcomes


def _schema_1_database(path: Path) -> None:
    """A database as the previous server version left it, with messages queued."""
    old = _Database(path, KEY, MIGRATIONS[:1])
    try:
        with old.transaction() as cur:
            cur.executemany(
                "INSERT INTO queues (recipient, last_seq, depth) VALUES (?, ?, ?)",
                [(A, 2, 2), (B, 5, 2)],
            )
            cur.executemany(
                "INSERT INTO messages (recipient, seq, sender, payload, enqueued_at_ms, "
                "expires_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (A, 1, C, b"one", 10, FAR),
                    (A, 2, C, b"fanned", 20, FAR),
                    (B, 4, D, b"short-lived", 15, 100),
                    (B, 5, C, b"fanned", 20, FAR),  # schema 1 stored one copy per recipient
                ],
            )
    finally:
        old.close()


async def test_a_schema_1_database_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "qpq.db"
    _schema_1_database(path)
    store = await SqlCipherStorage.open(path, KEY)
    try:
        versions = await store._run(
            lambda: store._db.conn.execute("SELECT version FROM schema_migrations").fetchall()
        )
        assert versions == [(1,), (2,)]
        tables = await store._run(
            lambda: store._db.conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'messages'"
            ).fetchall()
        )
        assert tables == []
        fetched = await store.fetch(A, after_seq=0, limit=10, max_bytes=1 << 20, now_ms=50)
        assert [(m.seq, m.sender, m.payload, m.enqueued_at_ms) for m in fetched] == [
            (1, C, b"one", 10),
            (2, C, b"fanned", 20),
        ]
        fetched = await store.fetch(B, after_seq=0, limit=10, max_bytes=1 << 20, now_ms=50)
        assert [(m.seq, m.payload) for m in fetched] == [(4, b"short-lived"), (5, b"fanned")]
        assert await _problems(store) == NO_PROBLEMS
        # The seq counters carried over; expiry, acks and deletion free payloads.
        assert await store.enqueue(A, D, b"new", now_ms=60, expires_ms=FAR, depth_cap=10) == 3
        assert await store.expire(now_ms=200, now_s=0) == (1, 0)
        assert await store.ack(A, 2) == 2
        await store.delete_account(B, now_ms=200)
        assert await _count(store, "payloads") == 1  # only A's new message
        assert await _problems(store) == NO_PROBLEMS
    finally:
        await store.close()


async def test_a_failed_upgrade_leaves_schema_1_untouched(tmp_path: Path) -> None:
    path = tmp_path / "qpq.db"
    _schema_1_database(path)
    version, description, statements = MIGRATIONS[1]
    broken = (
        MIGRATIONS[0],
        (version, description, (*statements, "SELECT no_such_column FROM queues")),
    )
    with pytest.raises(StorageError, match="cannot prepare database"):
        _Database(path, KEY, broken)
    old = _Database(path, KEY, MIGRATIONS[:1])
    try:
        tables = {
            row[0]
            for row in old.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        assert "messages" in tables
        assert "payloads" not in tables
        assert "deliveries" not in tables
        (count,) = old.conn.execute("SELECT count(*) FROM messages").fetchone()
        assert count == 4
    finally:
        old.close()
    store = await SqlCipherStorage.open(path, KEY)  # the real upgrade still works
    try:
        assert await _count(store, "deliveries") == 4
    finally:
        await store.close()
