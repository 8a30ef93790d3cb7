"""A payload is stored once per publish and freed with its last queue row."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from storage_checks import (
    FAR,
    NO_PROBLEMS,
    apply_commit,
    delivery,
    make_group,
    payload_problems,
)

from qpq_proto import DEFAULT_LIMITS, NO_SENDER
from qpq_proto.errors import EpochConflictError, ForbiddenError
from qpq_server import StorageError
from qpq_server._migrations import MIGRATIONS
from qpq_server._sqlcipher import SqlCipherStorage, _Database
from qpq_server._storage import Delivered, Delivery

KEY = "payload-test-key"
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
        await make_group(store, b"g", (A, B, C, D))
        payload = os.urandom(200_000)
        sent = delivery(D, payload, depth_cap=10)
        epoch, delivered = await store.send_application(
            b"g", epoch=0, oldest_epoch=3, delivery=sent
        )
        assert (epoch, delivered.seqs, delivered.gaps) == (0, {A: 1, B: 1, C: 1}, ())
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
            assert (envelope.payload, envelope.sender, envelope.enqueued_at_ms) == (payload, D, 0)
        assert await store.ack(A, 1) == 1
        assert await store.ack(B, 1) == 1
        assert await _count(store, "payloads") == 1  # C still holds it
        assert await store.ack(C, 1) == 1
        assert await _count(store, "payloads") == 0
        # A publish to nobody stores nothing (nothing would ever free it).
        await make_group(store, b"alone", (D,))
        assert await store.send_application(b"alone", epoch=0, oldest_epoch=3, delivery=sent) == (
            0,
            Delivered(seqs={}, gaps=()),
        )
        assert await apply_commit(store, b"alone", 0, (), delivery(D, b"x")) == Delivered(
            seqs={}, gaps=()
        )
        assert await _count(store, "payloads") == 0
        assert await _problems(store) == NO_PROBLEMS
    finally:
        await store.close()


@dataclass(frozen=True, slots=True)
class _Entry:
    payload_id: int
    payload: bytes  # the group id for a gap notice
    expires: int
    sender: bytes
    gap: bool = False


class _Model:
    """What the queues must contain, kept in Python beside the database."""

    def __init__(self, rosters: dict[bytes, tuple[bytes, ...]], cap: int, share_cap: int) -> None:
        self.queues: dict[bytes, dict[int, _Entry]] = {}
        self.last_seq: dict[bytes, int] = {}
        self.now_ms = 0
        self.epochs: dict[bytes, int] = dict.fromkeys(rosters, 0)
        self.rosters = dict(rosters)
        self.gaps: set[tuple[bytes, bytes]] = set()
        self.cap, self.share_cap = cap, share_cap
        self.next_id = 0
        #: Identities whose account was deleted: no roster takes them back.
        self.deleted: set[bytes] = set()

    def _queue(self, recipient: bytes, entry: _Entry) -> int:
        # A seq follows the clock: the time in microseconds, or one more than the last.
        seq = max(self.last_seq.get(recipient, 0) + 1, self.now_ms * 1000)
        self.last_seq[recipient] = seq
        self.queues.setdefault(recipient, {})[seq] = entry
        return seq

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def fan_out(
        self, group: bytes, recipients: tuple[bytes, ...], sender: bytes, payload: bytes, exp: int
    ) -> Delivered:
        payload_id = None
        seqs: dict[bytes, int] = {}
        gaps: list[bytes] = []
        for r in recipients:
            queue = self.queues.get(r, {})
            share = sum(1 for e in queue.values() if e.sender == sender)
            if len(queue) >= self.cap or share >= self.share_cap:
                if (r, group) not in self.gaps:
                    self._queue(r, _Entry(self._new_id(), group, exp, NO_SENDER, gap=True))
                    self.gaps.add((r, group))
                    gaps.append(r)
                continue
            if payload_id is None:
                payload_id = self._new_id()
            seqs[r] = self._queue(r, _Entry(payload_id, payload, exp, sender))
        return Delivered(seqs=seqs, gaps=tuple(gaps))

    def remove(self, recipient: bytes, seqs: list[int]) -> None:
        queue = self.queues.get(recipient, {})
        for seq in seqs:
            entry = queue.pop(seq)
            if entry.gap:
                self.gaps.discard((recipient, entry.payload))

    def delete_account(self, deleted: bytes) -> None:
        """An account deletion: its queue goes, it leaves every roster, and each other
        member with room in its queue (by the default queue depth: the store is
        not told another) gets one deletion notice per group (a payload per
        group), kept for the message TTL."""
        self.remove(deleted, list(self.queues.get(deleted, {})))
        self.deleted.add(deleted)
        expires = self.now_ms + DEFAULT_LIMITS.message_ttl_seconds * 1000
        for group in sorted(self.rosters):
            roster = self.rosters[group]
            if deleted not in roster:
                continue
            self.rosters[group] = tuple(m for m in roster if m != deleted)
            room = [
                m
                for m in self.rosters[group]
                if len(self.queues.get(m, {})) < DEFAULT_LIMITS.queue_depth
            ]
            if room:
                notice = _Entry(self._new_id(), deleted, expires, NO_SENDER)
                for member in room:
                    self._queue(member, notice)

    def live_payloads(self) -> int:
        return len({e.payload_id for queue in self.queues.values() for e in queue.values()})


async def test_mixed_workload_never_leaks_or_dangles_a_payload(tmp_path: Path) -> None:
    rng = random.Random(20261130)
    people = (A, B, C, D)
    model = _Model({b"g1": people, b"g2": (B, C, D)}, cap=6, share_cap=4)
    now = model.now_ms = 1_000_000
    store = await SqlCipherStorage.open(tmp_path / "qpq.db", KEY)
    outcomes: dict[str, int] = {}
    try:
        for group, roster in model.rosters.items():
            await make_group(store, group, roster)
        for _step in range(400):
            op = rng.random()
            payload = os.urandom(rng.choice((16, 3000, 9000)))
            expires = now + rng.choice((50, 500, 5000))
            sent_by = rng.choice(people)
            sent = delivery(
                sent_by, payload, now_ms=now, expires_ms=expires, depth_cap=6, share_cap=4
            )
            group = rng.choice((b"g1", b"g2"))
            roster, current = model.rosters[group], model.epochs[group]
            others = tuple(m for m in roster if m != sent_by)
            expected: type[Exception] | None = None
            if op < 0.35:
                epoch = rng.randint(current - 4, current + 1)
                if sent_by not in roster:
                    expected = ForbiddenError
                elif not current - 3 <= epoch <= current:
                    expected = EpochConflictError
                call = store.send_application(group, epoch=epoch, oldest_epoch=3, delivery=sent)
                if expected is None:
                    result = model.fan_out(group, others, *_facts(sent))
                    assert await call == (current, result)
                    name = "gap" if result.gaps else "application"
                else:
                    with pytest.raises(expected):
                        await call
                    name = expected.__name__
            elif op < 0.5:
                if sent_by not in roster:
                    continue  # the handler refuses non-members before storage
                from_epoch = rng.randint(current - 1, current)
                # Commits to g2 sometimes change its roster (always keeping the committer).
                after = None
                if group == b"g2" and rng.random() < 0.5:
                    after = tuple(sorted({sent_by, *rng.sample(people, rng.randint(0, 3))}))
                    # A deleted account's leaf may stay in the MLS roster; the
                    # members messages go to never include it again.
                    kept = tuple(m for m in after if m not in model.deleted)
                call = apply_commit(store, group, from_epoch, others, sent, members=after)
                if from_epoch == current:
                    result = model.fan_out(group, others, *_facts(sent))
                    assert await call == result
                    model.epochs[group] += 1
                    if after is not None:
                        model.rosters[group] = kept
                    name = "gap" if result.gaps else "commit"
                else:
                    with pytest.raises(EpochConflictError):
                        await call
                    name = "EpochConflictError"
            elif op < 0.75:
                recipient = rng.choice(people)
                up_to = rng.randint(0, model.last_seq.get(recipient, 0) + 1)
                gone = [seq for seq in model.queues.get(recipient, {}) if seq <= up_to]
                assert await store.ack(recipient, up_to) == len(gone)
                model.remove(recipient, gone)
                name = "ack"
            elif op < 0.92:
                now += rng.choice((10, 100, 1000))
                model.now_ms = now
                removed, _packages = await store.expire(now_ms=now, now_s=now // 1000)
                expired = 0
                for recipient, queue in model.queues.items():
                    old = [s for s, entry in queue.items() if entry.expires <= now]
                    model.remove(recipient, old)
                    expired += len(old)
                assert removed == expired
                name = "expire"
            else:
                recipient = rng.choice(people)
                await store.delete_account(recipient, now_ms=now)
                model.delete_account(recipient)
                name = "delete_account"
            outcomes[name] = outcomes.get(name, 0) + 1
            assert await _problems(store) == NO_PROBLEMS, name
            assert await _count(store, "payloads") == model.live_payloads(), name
        for recipient in people:
            fetched = await store.fetch(
                recipient, after_seq=0, limit=100, max_bytes=1 << 24, now_ms=now
            )
            queue = model.queues.get(recipient, {})
            live = sorted(s for s, entry in queue.items() if entry.expires > now)
            assert [m.seq for m in fetched] == live
            assert [(m.payload, m.gap_group_id, m.sender) for m in fetched] == [
                (b"", queue[s].payload, NO_SENDER)
                if queue[s].gap
                else (queue[s].payload, b"", queue[s].sender)
                for s in live
            ]
        for group in model.rosters:
            assert await store.group_version(group) == (model.epochs[group], 0)
            assert await store.group_members(group) == model.rosters[group]
    finally:
        await store.close()
    # The workload really exercised every path, every refusal and gap notices included.
    assert set(outcomes) == {
        "application",
        "commit",
        "ack",
        "expire",
        "delete_account",
        "gap",
        "EpochConflictError",
        "ForbiddenError",
    }, outcomes


def _facts(sent: Delivery) -> tuple[bytes, bytes, int]:
    return sent.sender, sent.payload, sent.expires_ms


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
        assert versions == [(version,) for version, _description, _statements in MIGRATIONS]
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
        await make_group(store, b"g", (A, D))
        sent = delivery(D, b"new", now_ms=0, depth_cap=10)
        _epoch, delivered = await store.send_application(
            b"g", epoch=0, oldest_epoch=3, delivery=sent
        )
        assert delivered.seqs == {A: 3}
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
