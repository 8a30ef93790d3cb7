"""The SQLCipher backend in-process: expiry with injected time, atomicity, keys, migrations."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from qpq_proto.errors import EpochConflictError, QueueFullError
from qpq_server import StorageError
from qpq_server._sqlcipher import SqlCipherStorage
from qpq_server._storage import StoredKeyPackage

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32
HOUR_MS = 3600 * 1000


async def _open(tmp_path: Path, key: str = "k3y'with\"quotes") -> SqlCipherStorage:
    return await SqlCipherStorage.open(tmp_path / "qpq.db", key)


async def test_expired_messages_are_never_served_and_get_removed(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    try:
        now = 1_000_000_000_000
        await store.enqueue(A, B, b"old", now_ms=now, expires_ms=now + HOUR_MS, depth_cap=10)
        await store.enqueue(A, B, b"new", now_ms=now, expires_ms=now + 3 * HOUR_MS, depth_cap=10)
        later = now + 2 * HOUR_MS
        fetched = await store.fetch(A, after_seq=0, limit=10, max_bytes=1 << 20, now_ms=later)
        assert [m.payload for m in fetched] == [b"new"]
        assert await store.expire(now_ms=later, now_s=later // 1000) == (1, 0)
        stats = await store.queue_stats()
        assert (stats.queues, stats.messages) == (1, 1)
        # Expiry frees the queue's depth; the seq still only goes up.
        seq = await store.enqueue(A, B, b"x", now_ms=later, expires_ms=later + HOUR_MS, depth_cap=2)
        assert seq == 3
    finally:
        await store.close()


async def test_expired_key_packages_are_never_served(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    try:
        package = StoredKeyPackage(package=b"kp", fingerprint=b"f" * 32, not_after=2000)
        last = StoredKeyPackage(package=b"lr", fingerprint=b"g" * 32, not_after=5000)
        await store.add_key_packages(A, [package], max_stored=10)
        await store.set_last_resort(A, last)
        assert await store.count_key_packages(A, 1000) == (1, True)
        assert await store.claim_key_package(A, 3000) == b"lr"  # the single-use one expired
        assert await store.claim_key_package(A, 6000) is None
        assert await store.expire(now_ms=6_000_000, now_s=6000) == (0, 2)
    finally:
        await store.close()


async def test_concurrent_claims_never_share_a_package(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    try:
        packages = [StoredKeyPackage(bytes([i]) * 8, bytes([i]) * 32, 10**10) for i in range(10)]
        await store.add_key_packages(A, packages, max_stored=100)
        results = await asyncio.gather(*(store.claim_key_package(A, 0) for _ in range(50)))
        served = [r for r in results if r is not None]
        assert sorted(served) == sorted(p.package for p in packages)
    finally:
        await store.close()


async def test_publish_is_all_or_nothing(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    try:
        common = {"now_ms": 1, "expires_ms": 10**12, "depth_cap": 1}
        await store.enqueue(C, A, b"fill", **common)
        with pytest.raises(QueueFullError):
            await store.publish(
                b"g", epoch=3, is_commit=True, recipients=(B, C), sender=A, payload=b"p", **common
            )
        # Neither B's queue nor the group's commit epoch changed.
        assert await store.fetch(B, after_seq=0, limit=5, max_bytes=1 << 20, now_ms=1) == []
        seqs = await store.publish(
            b"g", epoch=3, is_commit=True, recipients=(B,), sender=A, payload=b"p", **common
        )
        assert seqs == {B: 1}
        with pytest.raises(EpochConflictError):
            await store.publish(
                b"g", epoch=2, is_commit=True, recipients=(), sender=A, payload=b"p", **common
            )
    finally:
        await store.close()


async def test_fetch_respects_the_byte_budget_but_returns_one(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    try:
        for _ in range(3):
            await store.enqueue(A, B, bytes(1000), now_ms=1, expires_ms=10**12, depth_cap=10)
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
    assert versions == [(1,), (2,)]


async def test_closed_store_refuses(tmp_path: Path) -> None:
    store = await _open(tmp_path)
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
            await store.enqueue(A, B, b"x", now_ms=1, expires_ms=2, depth_cap=10)
            modes = {
                p.name: stat.S_IMODE(p.stat().st_mode)
                for p in (data, data / "qpq.db", data / "qpq.db-wal")
            }
        finally:
            await store.close()
    finally:
        os.umask(old_umask)
    assert modes == {"data": 0o700, "qpq.db": 0o600, "qpq.db-wal": 0o600}
