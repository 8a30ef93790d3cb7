"""The periodic cleanup, written once: each kind of row removed in bounded batches.

Each batch is one operation (a function over a :class:`~._engine.Txn`) that
removes at most one batch of its kind of row and returns how many it
removed; :func:`expire` and :func:`remove_unused` run each as its own write
transaction until one comes back short, so other calls are served between
batches. On PostgreSQL a batch skips the rows another transaction holds
(``FOR UPDATE SKIP LOCKED``): a fan-out or ack that holds them wins, and
the next round takes what is left.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from qpq_server._engine import Txn
from qpq_server._storage import Retention, Unused, seq_floor

__all__ = ["EXPIRE_BATCH", "GROUP_BATCH", "Write", "expire", "in_batches", "remove_unused"]

_T = TypeVar("_T")
#: Runs an operation in a write transaction of its own (a backend's runner).
Write = Callable[[Callable[[Txn], int]], Awaitable[int]]

#: Rows one cleanup transaction removes, at most (groups: GROUP_BATCH).
EXPIRE_BATCH = 1000
#: Groups removed per transaction (each takes its state, roster and commits along).
GROUP_BATCH = 100


def _expire_messages(txn: Txn, now_ms: int) -> int:
    rows = txn.all(
        "DELETE FROM deliveries WHERE (recipient, seq) IN (SELECT recipient, seq FROM deliveries "
        "WHERE expires_at_ms <= ? LIMIT ? FOR UPDATE SKIP LOCKED) "
        "RETURNING recipient",
        (now_ms, EXPIRE_BATCH),
    )
    per_recipient: dict[bytes, int] = {}
    for (recipient,) in rows:
        per_recipient[bytes(recipient)] = per_recipient.get(bytes(recipient), 0) + 1
    # In one order, as a fan-out locks queue rows.
    txn.executemany(
        "UPDATE queues SET depth = greatest(0, depth - ?) WHERE recipient = ?",
        [(per_recipient[r], r) for r in sorted(per_recipient)],
    )
    return len(rows)


def _expire_key_packages(txn: Txn, now_s: int) -> int:
    removed = txn.changed(
        "DELETE FROM key_packages WHERE id IN (SELECT id FROM key_packages "
        "WHERE not_after <= ? LIMIT ? FOR UPDATE SKIP LOCKED)",
        (now_s, EXPIRE_BATCH),
    )
    if removed < EXPIRE_BATCH:
        removed += txn.changed(
            "DELETE FROM last_resort WHERE (identity_key, ciphersuite) IN "
            "(SELECT identity_key, ciphersuite FROM last_resort "
            "WHERE not_after <= ? LIMIT ? FOR UPDATE SKIP LOCKED)",
            (now_s, EXPIRE_BATCH - removed),
        )
    return removed


def _remove_idle_queues(txn: Txn, below_seq: int) -> int:
    # The condition is checked again by the DELETE on the row as it is then:
    # a fan-out that holds or refilled the row keeps it.
    return txn.changed(
        "DELETE FROM queues WHERE recipient IN (SELECT recipient FROM queues "
        "WHERE depth = 0 AND last_seq < ? LIMIT ? FOR UPDATE SKIP LOCKED) "
        "AND depth = 0 AND last_seq < ?",
        (below_seq, EXPIRE_BATCH, below_seq),
    )


def _remove_unused_groups(txn: Txn, used_before_ms: int) -> int:
    # Locked and skipped when busy (PostgreSQL): a publish racing the removal
    # either holds the row (the group stays this round) or finds it gone.
    groups = txn.all(
        "SELECT group_id FROM groups WHERE used_at_ms < ? LIMIT ? FOR UPDATE SKIP LOCKED",
        (used_before_ms, GROUP_BATCH),
    )
    for table in ("group_state", "group_members", "group_commits", "groups"):
        txn.executemany(f"DELETE FROM {table} WHERE group_id = ?", groups)  # noqa: S608 - fixed names
    return len(groups)


def _remove_old_endpoints(txn: Txn, before_ms: int) -> int:
    return txn.changed(
        "DELETE FROM endpoints WHERE identity_key IN (SELECT identity_key FROM endpoints "
        "WHERE updated_at_ms < ? LIMIT ? FOR UPDATE SKIP LOCKED)",
        (before_ms, EXPIRE_BATCH),
    )


def _remove_full_claim_buckets(txn: Txn, now_s: float) -> int:
    # No row is a full bucket (see _ops_keys): one whose full_at has passed
    # says nothing any more.
    return txn.changed(
        "DELETE FROM key_package_claims WHERE claim_key IN (SELECT claim_key "
        "FROM key_package_claims WHERE full_at < ? LIMIT ? FOR UPDATE SKIP LOCKED) "
        "AND full_at < ?",
        (now_s, EXPIRE_BATCH, now_s),
    )


def _remove_full_account_buckets(txn: Txn, now_s: float) -> int:
    # As the claim buckets: a row whose full_at has passed says nothing any more.
    return txn.changed(
        "DELETE FROM account_limits WHERE bucket_key IN (SELECT bucket_key "
        "FROM account_limits WHERE full_at < ? LIMIT ? FOR UPDATE SKIP LOCKED) "
        "AND full_at < ?",
        (now_s, EXPIRE_BATCH, now_s),
    )


def _remove_released_usernames(txn: Txn, before_ms: int) -> int:
    return txn.changed(
        "DELETE FROM username_keys WHERE key IN (SELECT key "
        "FROM username_keys WHERE released_at_ms <= ? LIMIT ?"
        " FOR UPDATE SKIP LOCKED)",
        (before_ms, EXPIRE_BATCH),
    )


async def in_batches(write: Write, batch: Callable[[Txn, _T], int], bound: _T, size: int) -> int:
    """Run ``batch(txn, bound)`` until it removes fewer than ``size`` rows; the total."""
    total = 0
    while True:
        removed = await write(lambda txn: batch(txn, bound))
        total += removed
        if removed < size:
            return total


async def expire(write: Write, *, now_ms: int, now_s: int) -> tuple[int, int]:
    """Expired messages and KeyPackages removed (see ``Storage.expire``)."""
    messages = await in_batches(write, _expire_messages, now_ms, EXPIRE_BATCH)
    packages = await in_batches(write, _expire_key_packages, now_s, EXPIRE_BATCH)
    return messages, packages


async def remove_unused(write: Write, *, now_ms: int, retention: Retention) -> Unused:
    """Rows nobody needs any more removed (see ``Storage.remove_unused``)."""
    below_seq = seq_floor(now_ms - retention.queue_idle_ms)
    return Unused(
        queues=await in_batches(write, _remove_idle_queues, below_seq, EXPIRE_BATCH),
        groups=await in_batches(
            write, _remove_unused_groups, now_ms - retention.group_idle_ms, GROUP_BATCH
        ),
        endpoints=await in_batches(
            write, _remove_old_endpoints, now_ms - retention.endpoints_ms, EXPIRE_BATCH
        ),
        username_holds=await in_batches(
            write, _remove_released_usernames, now_ms - retention.username_hold_ms, EXPIRE_BATCH
        ),
        key_package_claims=await in_batches(
            write, _remove_full_claim_buckets, now_ms / 1000, EXPIRE_BATCH
        ),
        account_limits=await in_batches(
            write, _remove_full_account_buckets, now_ms / 1000, EXPIRE_BATCH
        ),
    )
