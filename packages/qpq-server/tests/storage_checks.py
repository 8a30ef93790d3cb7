"""Invariants of the stored queues, checked with SQL on the database itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qpq_server._sqlcipher import _Database


def payload_problems(conn: Any) -> dict[str, int]:
    """Counts that must all be zero in a consistent database.

    ``orphans``: payload rows no queue row references (leaked);
    ``dangling``: queue rows whose payload is gone (freed too early or twice);
    ``depth``: queues whose depth counter differs from their row count;
    ``foreign_keys``: rows ``PRAGMA foreign_key_check`` reports.
    """
    (orphans,) = conn.execute(
        "SELECT count(*) FROM payloads AS p "
        "WHERE NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.payload_id = p.id)"
    ).fetchone()
    (dangling,) = conn.execute(
        "SELECT count(*) FROM deliveries AS d "
        "WHERE NOT EXISTS (SELECT 1 FROM payloads AS p WHERE p.id = d.payload_id)"
    ).fetchone()
    (depth,) = conn.execute(
        "SELECT count(*) FROM queues AS q WHERE q.depth != "
        "(SELECT count(*) FROM deliveries AS d WHERE d.recipient = q.recipient)"
    ).fetchone()
    foreign_keys = len(conn.execute("PRAGMA foreign_key_check").fetchall())
    return {
        "orphans": int(orphans),
        "dangling": int(dangling),
        "depth": int(depth),
        "foreign_keys": foreign_keys,
    }


NO_PROBLEMS = {"orphans": 0, "dangling": 0, "depth": 0, "foreign_keys": 0}


def file_payload_problems(path: Path, key: str) -> dict[str, int]:
    """:func:`payload_problems` of a closed database file."""
    db = _Database(path, key)
    try:
        return payload_problems(db.conn)
    finally:
        db.close()
