"""Storage-level helpers: groups driven through a backend's group operations directly,
and invariants of the stored queues checked with SQL on the database itself (SQLCipher
or PostgreSQL).

The group state rows here are opaque bytes (the storage never reads them);
tests that need real MLS go through a server (see groups.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from qpq_server._sqlcipher import SqlCipherStorage, _Database
from qpq_server._storage import Delivered, Delivery, GroupUpdate, Storage

#: An expiry no test reaches.
FAR = 10**13
#: A quota no test reaches (tests of quotas pass their own).
NO_QUOTA = 1 << 40


def delivery(
    sender: bytes,
    payload: bytes,
    *,
    now_ms: int = 0,
    expires_ms: int = FAR,
    depth_cap: int = 5,
    share_cap: int | None = None,
    quota_bytes: int = NO_QUOTA,
) -> Delivery:
    """One message of ``sender``; its share cap is the depth cap unless given.

    At the default time, 0, the seq floor (the time in microseconds) is 0 too:
    a new queue's seqs are 1, 2, 3, ...
    """
    return Delivery(
        sender=sender,
        payload=payload,
        now_ms=now_ms,
        expires_ms=expires_ms,
        depth_cap=depth_cap,
        share_cap=depth_cap if share_cap is None else share_cap,
        quota_bytes=quota_bytes,
    )


async def make_group(
    store: Storage,
    group_id: bytes,
    members: tuple[bytes, ...],
    *,
    epoch: int = 0,
    now_ms: int = 1,
) -> None:
    """A group whose creator is its first member (with no group quota in the way)."""
    await store.create_group(
        group_id,
        creator=members[0],
        epoch=epoch,
        members=members,
        state=((b"epoch", b"%d" % epoch),),
        group_info=b"group-info-%d" % epoch,
        now_ms=now_ms,
        max_created=1 << 30,
    )


def commit(
    from_epoch: int, payload: bytes, members: tuple[bytes, ...] | None = None
) -> GroupUpdate:
    """A verified commit from ``from_epoch`` (its state rows are stand-ins)."""
    return GroupUpdate(
        from_epoch=from_epoch,
        from_version=0,  # no proposal stored in the epoch
        epoch=from_epoch + 1,
        state=((b"epoch", b"%d" % (from_epoch + 1)),),
        members=members,
        group_info=b"group-info-%d" % (from_epoch + 1),
        commit_hash=hashlib.sha256(payload).digest(),
    )


async def apply_commit(
    store: Storage,
    group_id: bytes,
    from_epoch: int,
    recipients: tuple[bytes, ...],
    sent: Delivery,
    *,
    members: tuple[bytes, ...] | None = None,
) -> Delivered:
    """Store ``sent`` (a commit from ``from_epoch``) and fan it out to ``recipients``."""
    return await store.apply_group_update(
        group_id,
        commit(from_epoch, sent.payload, members),
        recipients=recipients,
        delivery=sent,
    )


async def payloads(store: Storage, recipient: bytes, now_ms: int = 1) -> list[Any]:
    """(seq, payload) of each queued message, (seq, "gap", group) of each gap notice."""
    fetched = await store.fetch(recipient, after_seq=0, limit=100, max_bytes=1 << 24, now_ms=now_ms)
    return [(m.seq, "gap", m.gap_group_id) if m.is_gap else (m.seq, m.payload) for m in fetched]


def _problem_queries() -> dict[str, str]:
    """The counts of :func:`payload_problems` (SQLite's null-safe ``IS NOT``)."""
    return {
        "orphans": "SELECT count(*) FROM payloads AS p "
        "WHERE NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.payload_id = p.id)",
        "dangling": "SELECT count(*) FROM deliveries AS d "
        "WHERE NOT EXISTS (SELECT 1 FROM payloads AS p WHERE p.id = d.payload_id)",
        "depth": "SELECT count(*) FROM queues AS q WHERE q.depth != "
        "(SELECT count(*) FROM deliveries AS d WHERE d.recipient = q.recipient)",
        "shares": "SELECT (SELECT count(*) FROM (SELECT recipient, sender, count(*) AS n "
        "FROM deliveries GROUP BY recipient, sender) AS d LEFT JOIN queue_shares AS s "
        "ON s.recipient = d.recipient AND s.sender = d.sender WHERE s.depth IS NOT d.n) "
        "+ (SELECT count(*) FROM queue_shares AS s WHERE NOT EXISTS (SELECT 1 FROM deliveries "
        "AS d WHERE d.recipient = s.recipient AND d.sender = s.sender))",
        "gaps": "SELECT count(*) FROM gaps AS g WHERE NOT EXISTS "
        "(SELECT 1 FROM deliveries AS d WHERE d.recipient = g.recipient AND d.seq = g.seq)",
        "quota": "SELECT (SELECT count(*) FROM (SELECT sender, sum(length(payload)) AS n "
        "FROM payloads WHERE gap = 0 GROUP BY sender) AS p LEFT JOIN queued_bytes AS q "
        "ON q.sender = p.sender WHERE q.bytes IS NOT p.n) + (SELECT count(*) "
        "FROM queued_bytes AS q WHERE NOT EXISTS "
        "(SELECT 1 FROM payloads AS p WHERE p.sender = q.sender AND p.gap = 0))",
    }


def payload_problems(conn: Any) -> dict[str, int]:
    """Counts that must all be zero in a consistent database.

    ``orphans``: payload rows no queue row references (leaked);
    ``dangling``: queue rows whose payload is gone (freed too early or twice);
    ``depth``: queues whose depth counter differs from their row count;
    ``shares``: per-sender shares that differ from the sender's queue rows;
    ``gaps``: gap-notice marks whose queue row is gone;
    ``quota``: senders whose counted bytes differ from their stored payloads';
    ``foreign_keys``: rows ``PRAGMA foreign_key_check`` reports.
    """
    counts = {
        name: int(conn.execute(query).fetchone()[0]) for name, query in _problem_queries().items()
    }
    counts["foreign_keys"] = len(conn.execute("PRAGMA foreign_key_check").fetchall())
    return counts


async def rows(store: Any, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``query`` (``?`` placeholders) on either backend's database."""
    return await store._read(lambda txn: txn.all(query, params))


async def execute(store: Any, query: str, *params: Any) -> None:
    """Run ``query`` (``?`` placeholders) in a write transaction on either backend."""
    await store._write(lambda txn: txn.execute(query, params))


async def store_problems(store: Any) -> dict[str, int]:
    """:func:`payload_problems` of an open store of either backend."""
    if isinstance(store, SqlCipherStorage):
        return await store._run(lambda: payload_problems(store._db.conn))
    counts = {
        # PostgreSQL spells SQLite's null-safe inequality IS DISTINCT FROM.
        name: int((await rows(store, query.replace(" IS NOT ", " IS DISTINCT FROM ")))[0][0])
        for name, query in _problem_queries().items()
    }
    # PostgreSQL checks every foreign key on each statement: none can dangle.
    counts["foreign_keys"] = 0
    return counts


async def store_counts(store: Any) -> dict[str, int]:
    """:func:`table_counts` of an open store of either backend."""
    if isinstance(store, SqlCipherStorage):
        return await store._run(lambda: table_counts(store._db.conn))
    tables = [
        str(row[0])
        for row in await rows(
            store,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema() AND table_name != 'schema_migrations' ORDER BY table_name",
        )
    ]
    return {
        table: int((await rows(store, f"SELECT count(*) FROM {table}"))[0][0])  # noqa: S608 - names from the schema
        for table in tables
    }


NO_PROBLEMS = {
    "orphans": 0,
    "dangling": 0,
    "depth": 0,
    "shares": 0,
    "gaps": 0,
    "quota": 0,
    "foreign_keys": 0,
}


def table_counts(conn: Any) -> dict[str, int]:
    """Rows in every table of the schema (but the migration record), by table."""
    tables = [
        str(row[0])
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' AND name != 'schema_migrations' ORDER BY name"
        )
    ]
    return {
        table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 - names from the schema
        for table in tables
    }


def file_payload_problems(path: Path, key: str) -> dict[str, int]:
    """:func:`payload_problems` of a closed database file."""
    db = _Database(path, key)
    try:
        return payload_problems(db.conn)
    finally:
        db.close()
