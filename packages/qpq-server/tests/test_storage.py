"""Both backends in-process (SQLCipher, and PostgreSQL on a real server): expiry with
injected time, atomicity, groups and their fan-out; SQLCipher's keys and files."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sqlite3
from pathlib import Path

import pytest
from conftest import OpenStore
from storage_checks import (
    NO_PROBLEMS,
    apply_commit,
    delivery,
    make_group,
    payloads,
    rows,
    store_problems,
)

from qpq_proto.errors import (
    AlreadyExistsError,
    EpochConflictError,
    ForbiddenError,
    NotFoundError,
)
from qpq_server import StorageError
from qpq_server._migrations import MIGRATIONS
from qpq_server._ops_groups import ACCEPTED_COMMITS_KEPT
from qpq_server._sqlcipher import SqlCipherStorage, _Database
from qpq_server._storage import Delivered, Delivery, GroupUpdate, Storage, StoredKeyPackage

A, B, C, D = b"a" * 32, b"b" * 32, b"c" * 32, b"d" * 32
G = b"group"
HOUR_MS = 3600 * 1000


async def _open(tmp_path: Path, key: str = "k3y'with\"quotes") -> SqlCipherStorage:
    return await SqlCipherStorage.open(tmp_path / "qpq.db", key)


async def _send(store: Storage, sent: Delivery, group: bytes = G) -> Delivered:
    _epoch, delivered = await store.send_application(group, epoch=0, oldest_epoch=3, delivery=sent)
    return delivered


async def test_expired_messages_are_never_served_and_get_removed(open_store: OpenStore) -> None:
    store = await open_store()
    try:
        await make_group(store, G, (A, B))
        now = 1_000_000_000_000
        await _send(store, delivery(B, b"old", now_ms=now, expires_ms=now + HOUR_MS))
        await _send(store, delivery(B, b"new", now_ms=now, expires_ms=now + 3 * HOUR_MS))
        later = now + 2 * HOUR_MS
        fetched = await store.fetch(A, after_seq=0, limit=10, max_bytes=1 << 20, now_ms=later)
        assert [m.payload for m in fetched] == [b"new"]
        assert await store.expire(now_ms=later, now_s=later // 1000) == (1, 0)
        stats = await store.queue_stats()
        assert (stats.queues, stats.messages) == (1, 1)
        # Expiry frees the queue's depth; the seq still only goes up (it follows
        # the clock: the time in microseconds, or one more than the last).
        assert [m.seq for m in fetched] == [now * 1000 + 1]
        sent = delivery(B, b"x", now_ms=later, expires_ms=later + HOUR_MS, depth_cap=2)
        assert (await _send(store, sent)).seqs == {A: later * 1000}
    finally:
        await store.close()


async def test_expired_key_packages_are_never_served(open_store: OpenStore) -> None:
    store = await open_store()
    try:
        package = StoredKeyPackage(package=b"kp", fingerprint=b"f" * 32, not_after=2000)
        last = StoredKeyPackage(package=b"lr", fingerprint=b"g" * 32, not_after=5000)
        await store.add_key_packages(A, [package], max_stored=10, max_bytes=1 << 20)
        await store.set_last_resort(A, last)
        assert await store.count_key_packages(A, 1000) == (1, True)
        assert await store.claim_key_package(A, 3000) == b"lr"  # the single-use one expired
        assert await store.claim_key_package(A, 6000) is None
        assert await store.expire(now_ms=6_000_000, now_s=6000) == (0, 2)
    finally:
        await store.close()


async def test_concurrent_claims_never_share_a_package(open_store: OpenStore) -> None:
    store = await open_store()
    try:
        packages = [StoredKeyPackage(bytes([i]) * 8, bytes([i]) * 32, 10**10) for i in range(10)]
        await store.add_key_packages(A, packages, max_stored=100, max_bytes=1 << 20)
        results = await asyncio.gather(*(store.claim_key_package(A, 0) for _ in range(50)))
        served = [r for r in results if r is not None]
        assert sorted(served) == sorted(p.package for p in packages)
    finally:
        await store.close()


async def test_a_conflicting_update_changes_nothing(open_store: OpenStore) -> None:
    store = await open_store()
    try:
        await make_group(store, G, (A, B, C), epoch=3)
        state_before = await store.group_state(G)
        with pytest.raises(EpochConflictError) as conflict:
            await apply_commit(store, G, 2, (B, C), delivery(A, b"p"), members=(A,))
        assert (conflict.value.epoch, conflict.value.accepted_commit) == (3, b"")
        # Neither the queues, nor the state, roster, GroupInfo or epoch changed.
        assert await store.fetch(B, after_seq=0, limit=5, max_bytes=1 << 20, now_ms=1) == []
        assert await store.group_state(G) == state_before
        assert await store.group_members(G) == (A, B, C)
        assert await store.group_info(G) == (3, b"group-info-3")
        delivered = await apply_commit(store, G, 3, (B, C), delivery(A, b"p"), members=(A, B))
        assert delivered == Delivered(seqs={B: 1, C: 1}, gaps=())
        assert await store.group_members(G) == (A, B)
        assert await store.group_info(G) == (4, b"group-info-4")
        assert await store.accepted_commit(G, 3) == hashlib.sha256(b"p").digest()
        with pytest.raises(EpochConflictError) as conflict:
            await apply_commit(store, G, 3, (B,), delivery(A, b"q"))
        assert conflict.value.accepted_commit == hashlib.sha256(b"p").digest()
        with pytest.raises(NotFoundError):
            await apply_commit(store, b"nope", 0, (B,), delivery(A, b"q"))
    finally:
        await store.close()


async def test_a_full_queue_gets_a_gap_notice_and_the_rest_the_message(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    try:
        await make_group(store, G, (A, B, C))
        await make_group(store, b"h", (A, C))
        for payload in (b"fill1", b"fill2"):  # C's queue is now full
            await _send(store, delivery(A, payload, depth_cap=2), b"h")
        sent = delivery(A, b"p1", depth_cap=2)
        assert await apply_commit(store, G, 0, (B, C), sent) == Delivered(seqs={B: 1}, gaps=(C,))
        # One gap notice per group while it is unacknowledged; another group gets its own.
        sent = delivery(A, b"p2", depth_cap=2)
        assert await apply_commit(store, G, 1, (B, C), sent) == Delivered(seqs={B: 2}, gaps=())
        await _send(store, delivery(A, b"h2", depth_cap=2), b"h")
        assert await store.group_version(G) == (2, 0)
        assert await payloads(store, B) == [(1, b"p1"), (2, b"p2")]
        assert await payloads(store, C) == [
            (1, b"fill1"),
            (2, b"fill2"),
            (3, "gap", G),
            (4, "gap", b"h"),
        ]
        # Acknowledging the notice lets the next overflow queue another.
        await store.ack(C, 3)
        for payload in (b"g3", b"g4"):
            await _send(store, delivery(B, payload, depth_cap=2))
        assert await payloads(store, C) == [(4, "gap", b"h"), (5, b"g3"), (6, "gap", G)]
    finally:
        await store.close()


async def test_one_senders_share_of_a_queue_is_capped(open_store: OpenStore) -> None:
    store = await open_store()
    try:
        await make_group(store, G, (A, B, C))
        for payload in (b"m1", b"m2", b"m3"):
            delivered = await _send(store, delivery(B, payload, depth_cap=10, share_cap=2))
            assert delivered.seqs.keys() == ({A, C} if payload != b"m3" else set())
        delivered = await _send(store, delivery(C, b"other", depth_cap=10, share_cap=2))
        assert delivered.seqs == {A: 4, B: 1}
        assert await payloads(store, A) == [(1, b"m1"), (2, b"m2"), (3, "gap", G), (4, b"other")]
    finally:
        await store.close()


async def test_group_records(open_store: OpenStore) -> None:
    store = await open_store()
    try:
        assert await store.group_version(G) is None
        assert await store.group_state(G) is None
        assert await store.group_info(G) is None
        assert await store.group_members(G) is None
        await make_group(store, G, (B, A))
        with pytest.raises(AlreadyExistsError):
            await make_group(store, G, (C,))
        assert await store.group_version(G) == (0, 0)
        assert await store.group_members(G) == (A, B)
        assert await store.group_info(G) == (0, b"group-info-0")
        assert await store.group_state(G) == ((0, 0), [(b"epoch", b"0")])
        # A proposal changes the state rows and the version, not the epoch,
        # roster or GroupInfo.
        proposal = GroupUpdate(from_epoch=0, from_version=0, epoch=0, state=((b"proposal", b"p"),))
        await store.apply_group_update(G, proposal, recipients=(B,), delivery=delivery(A, b"p"))
        assert await store.group_state(G) == ((0, 1), [(b"epoch", b"0"), (b"proposal", b"p")])
        assert await store.group_info(G) == (0, b"group-info-0")
        assert await store.accepted_commit(G, 0) is None
        # A commit may delete rows; its Welcome reaches only the members it adds.
        update = GroupUpdate(
            from_epoch=0,
            from_version=1,
            epoch=1,
            state=((b"proposal", None), (b"epoch", b"1")),
            members=(A, B, C),
            group_info=b"group-info-1",
            commit_hash=b"h" * 32,
            group_info_digest=b"d" * 32,
        )
        delivered = await store.apply_group_update(
            G, update, recipients=(B,), delivery=delivery(A, b"c"), welcome=(b"welcome", (C,))
        )
        assert delivered == Delivered(seqs={B: 2, C: 1}, gaps=())
        assert await payloads(store, C) == [(1, b"welcome")]
        assert await payloads(store, B) == [(1, b"p"), (2, b"c")]
        assert await store.group_state(G) == ((1, 0), [(b"epoch", b"1")])
        assert await store.accepted_commit(G, 0) == b"h" * 32
        # Each delivery names its group; a commit, the digest of its GroupInfo.
        fetched = await store.fetch(B, after_seq=0, limit=10, max_bytes=1 << 20, now_ms=1)
        assert [(m.group_id, m.group_info_digest) for m in fetched] == [(G, b""), (G, b"d" * 32)]
        (welcome,) = await store.fetch(C, after_seq=0, limit=10, max_bytes=1 << 20, now_ms=1)
        assert (welcome.group_id, welcome.group_info_digest) == (G, b"")
        # A member's GroupInfo replaces the served one while the epoch holds.
        await store.replace_group_info(G, epoch=1, group_info=b"group-info-1-member")
        assert await store.group_info(G) == (1, b"group-info-1-member")
        assert await store.group_version(G) == (1, 0)
        with pytest.raises(EpochConflictError) as late:
            await store.replace_group_info(G, epoch=0, group_info=b"late")
        assert late.value.epoch == 1
        with pytest.raises(NotFoundError):
            await store.replace_group_info(b"nope", epoch=0, group_info=b"x")
        assert await store.group_info(G) == (1, b"group-info-1-member")
        # Application messages: members only, within the recent epochs.
        with pytest.raises(ForbiddenError):
            await _send(store, delivery(D, b"x"))
        with pytest.raises(NotFoundError):
            await _send(store, delivery(A, b"x"), b"nope")
        with pytest.raises(EpochConflictError):
            await store.send_application(G, epoch=2, oldest_epoch=3, delivery=delivery(A, b"x"))
    finally:
        await store.close()


async def test_an_update_verified_against_a_stale_version_changes_nothing(
    open_store: OpenStore,
) -> None:
    # As two nodes that verified against one state would: a proposal lands,
    # then a second proposal and a commit verified before it are refused
    # (still in epoch 0: their node verifies them again against the new
    # state), and neither overwrites what the first stored.
    store = await open_store()
    try:
        await make_group(store, G, (A, B, C))
        first = GroupUpdate(from_epoch=0, from_version=0, epoch=0, state=((b"queued", b"p1"),))
        await store.apply_group_update(G, first, recipients=(B, C), delivery=delivery(A, b"p1"))
        assert await store.group_version(G) == (0, 1)
        stale = (
            GroupUpdate(from_epoch=0, from_version=0, epoch=0, state=((b"queued", b"p2"),)),
            GroupUpdate(
                from_epoch=0,
                from_version=0,
                epoch=1,
                state=((b"queued", None), (b"epoch", b"1")),
                members=(A, B),
                group_info=b"group-info-1",
                commit_hash=b"h" * 32,
            ),
        )
        for update in stale:
            with pytest.raises(EpochConflictError) as conflict:
                await store.apply_group_update(
                    G, update, recipients=(A, C), delivery=delivery(B, b"late")
                )
            assert (conflict.value.epoch, conflict.value.accepted_commit) == (0, b"")
        assert await store.group_state(G) == ((0, 1), [(b"epoch", b"0"), (b"queued", b"p1")])
        assert await store.group_members(G) == (A, B, C)
        assert await store.group_info(G) == (0, b"group-info-0")
        assert await store.accepted_commit(G, 0) is None
        assert await payloads(store, A) == []
        assert await payloads(store, C) == [(1, b"p1")]
        assert await store_problems(store) == NO_PROBLEMS
        # Verified again against the version now stored, the commit lands.
        again = dataclasses.replace(stale[1], from_version=1)
        await store.apply_group_update(G, again, recipients=(A, C), delivery=delivery(B, b"c"))
        assert await store.group_state(G) == ((1, 0), [(b"epoch", b"1")])
        assert await store.group_members(G) == (A, B)
    finally:
        await store.close()


async def test_only_recent_accepted_commits_are_remembered(open_store: OpenStore) -> None:
    store = await open_store()
    try:
        await make_group(store, G, (A,))
        for epoch in range(ACCEPTED_COMMITS_KEPT + 3):
            await apply_commit(store, G, epoch, (), delivery(A, b"c%d" % epoch))
        last = ACCEPTED_COMMITS_KEPT + 2
        assert await store.accepted_commit(G, last) == hashlib.sha256(b"c%d" % last).digest()
        # Exactly the last ACCEPTED_COMMITS_KEPT epochs are remembered.
        assert await store.accepted_commit(G, last - ACCEPTED_COMMITS_KEPT + 1) is not None
        assert await store.accepted_commit(G, last - ACCEPTED_COMMITS_KEPT) is None
        assert await store.accepted_commit(G, 1) is None
        assert await rows(store, "SELECT count(*) FROM group_commits") == [(ACCEPTED_COMMITS_KEPT,)]
    finally:
        await store.close()


async def test_fetch_respects_the_byte_budget_but_returns_one(open_store: OpenStore) -> None:
    store = await open_store()
    try:
        await make_group(store, G, (A, B))
        for _ in range(3):
            await _send(store, delivery(B, bytes(1000), depth_cap=10))
        assert len(await store.fetch(A, after_seq=0, limit=10, max_bytes=2500, now_ms=1)) == 2
        assert len(await store.fetch(A, after_seq=0, limit=10, max_bytes=10, now_ms=1)) == 1
    finally:
        await store.close()


async def test_wrong_key_and_plaintext(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    await store.close()
    with pytest.raises(StorageError, match="db_key is wrong"):
        await _open(tmp_path, key="other")
    with pytest.raises(StorageError, match="encrypted"):
        await _open(tmp_path, key="")
    plain = await SqlCipherStorage.open(tmp_path / "plain.db", "")
    assert plain.backend == "sqlite-plaintext"
    await plain.close()
    with sqlite3.connect(tmp_path / "plain.db") as conn:
        versions = conn.execute("SELECT version FROM schema_migrations").fetchall()
    assert versions == [(version,) for version, _description, _statements in MIGRATIONS]


async def test_closed_store_refuses(open_store: OpenStore) -> None:
    store = await open_store()
    await store.close()
    with pytest.raises(StorageError):
        await store.ack(A, 1)
    assert (await store.check()).startswith("unavailable")


def test_a_failed_commit_leaves_the_connection_usable(tmp_path: Path) -> None:
    # A COMMIT can fail (disk full, I/O error); a deferred foreign key is a
    # portable way to make one fail. The single connection must not stay
    # inside the failed transaction, or every later write fails too.
    import sqlcipher3

    from qpq_server._sqlcipher import _Database

    db = _Database(tmp_path / "qpq.db", "key")
    try:
        db.conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        db.conn.execute(
            "CREATE TABLE child (pid INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
        )
        with pytest.raises(sqlcipher3.IntegrityError), db.transaction() as cur:
            cur.execute("INSERT INTO child VALUES (1)")
        assert not db.conn.in_transaction
        with db.transaction() as cur:
            (seq,) = cur.execute(
                "INSERT INTO queues (recipient, last_seq, depth) VALUES (?, 1, 0) "
                "RETURNING last_seq",
                (A,),
            ).fetchone()
        assert seq == 1
        assert db.conn.execute("SELECT count(*) FROM queues").fetchone() == (1,)
    finally:
        db.close()


async def test_new_data_dir_and_database_files_are_private(tmp_path: Path) -> None:
    import os
    import stat

    from qpq_server._tls import generate_self_signed

    old_umask = os.umask(0o022)
    try:
        data = tmp_path / "data"
        # Development startup order: the certificate first, then the database.
        generate_self_signed(data / "server-cert.pem", data / "server-key.pem")
        store = await SqlCipherStorage.open(data / "qpq.db", "key")
        try:
            await make_group(store, G, (A, B))
            await _send(store, delivery(B, b"x", expires_ms=2))
            modes = {
                p.name: stat.S_IMODE(p.stat().st_mode)
                for p in (data, data / "qpq.db", data / "qpq.db-wal")
            }
        finally:
            await store.close()
    finally:
        os.umask(old_umask)
    assert modes == {"data": 0o700, "qpq.db": 0o600, "qpq.db-wal": 0o600}


async def test_payloads_stored_before_schema_9_read_as_naming_no_group(tmp_path: Path) -> None:
    path = tmp_path / "qpq.db"
    old = _Database(path, "k", MIGRATIONS[:8])
    try:
        with old.transaction() as cur:
            cur.execute(
                "INSERT INTO payloads (id, sender, payload, enqueued_at_ms) VALUES (1, ?, ?, 5)",
                (A, b"before"),
            )
            cur.execute(
                "INSERT INTO deliveries (recipient, seq, payload_id, expires_at_ms, sender) "
                "VALUES (?, 1, 1, ?, ?)",
                (B, 10**15, A),
            )
            cur.execute("INSERT INTO queues (recipient, last_seq, depth) VALUES (?, 1, 1)", (B,))
    finally:
        old.close()
    store = await SqlCipherStorage.open(path, "k")
    try:
        (envelope,) = await store.fetch(B, after_seq=0, limit=10, max_bytes=1 << 20, now_ms=6)
        assert (envelope.payload, envelope.group_id, envelope.group_info_digest) == (
            b"before",
            b"",
            b"",
        )
    finally:
        await store.close()
