"""Per-identity rate-limit buckets that the nodes of one PostgreSQL database share.

A bucket is one row, ``full_at`` (see :mod:`._ratelimit`), read under its
row lock and written in the same transaction. Every node reads the one
clock of the database, so skew between the nodes' clocks cannot refill a
bucket early. (One SQLCipher file has one server process, which keeps its
buckets in memory: these run on PostgreSQL only.)
"""

from __future__ import annotations

from qpq_server._cleanup import EXPIRE_BATCH
from qpq_server._engine import Txn
from qpq_server._ratelimit import debit_tokens, take_tokens

__all__ = ["debit_rate_tokens", "remove_full_buckets", "take_rate_tokens"]


def take_rate_tokens(txn: Txn, key: bytes, want: float, rate: float, capacity: float) -> float:
    now, full_at = _lock_bucket(txn, key)
    granted, full_at_after = take_tokens(full_at, now, want, rate, capacity)
    if granted:
        _store_bucket(txn, key, full_at, full_at_after)
    return granted


def debit_rate_tokens(txn: Txn, key: bytes, cost: float, rate: float, capacity: float) -> None:
    now, full_at = _lock_bucket(txn, key)
    _store_bucket(txn, key, full_at, debit_tokens(full_at, now, cost, rate, capacity))


def _lock_bucket(txn: Txn, key: bytes) -> tuple[float, float | None]:
    """The database's clock and the bucket's ``full_at``, its row locked till COMMIT."""
    now, full_at = txn.one(
        "SELECT extract(epoch FROM clock_timestamp())::float8, "
        "(SELECT full_at FROM rate_limits WHERE identity_key = ? FOR UPDATE)",
        (key,),
    ) or (0.0, None)
    return float(now), None if full_at is None else float(full_at)


def _store_bucket(txn: Txn, key: bytes, full_at: float | None, after: float) -> None:
    """Write a bucket read by ``_lock_bucket``: a new row where there was none.

    Two nodes that both found no row both INSERT: one fails on the primary
    key and its transaction runs again, then finding the other's row.
    """
    if full_at is None:
        txn.execute("INSERT INTO rate_limits (identity_key, full_at) VALUES (?, ?)", (key, after))
    else:
        txn.execute("UPDATE rate_limits SET full_at = ? WHERE identity_key = ?", (after, key))


def remove_full_buckets(txn: Txn, _bound: None) -> int:
    """One batch of buckets that are full again (no row means a full bucket)."""
    return txn.changed(
        "DELETE FROM rate_limits WHERE identity_key IN (SELECT identity_key FROM rate_limits "
        "WHERE full_at < extract(epoch FROM clock_timestamp()) LIMIT ? FOR UPDATE SKIP LOCKED) "
        "AND full_at < extract(epoch FROM clock_timestamp())",
        (EXPIRE_BATCH,),
    )
