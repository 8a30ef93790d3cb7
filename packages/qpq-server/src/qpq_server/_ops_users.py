"""Published endpoints and account deletion (usernames: :mod:`._ops_usernames`)."""

from __future__ import annotations

from qpq_server._engine import Txn
from qpq_server._ops_usernames import hold_username
from qpq_server._rows import decode_endpoints, encode_endpoints
from qpq_server._storage import StoredEndpoints

__all__ = ["delete_account", "publish_endpoints", "resolve_endpoints"]


def publish_endpoints(
    txn: Txn, identity_key: bytes, endpoints: StoredEndpoints, now_ms: int
) -> None:
    txn.execute(
        "INSERT INTO endpoints (identity_key, endpoints, observed_host, observed_port, "
        "updated_at_ms) VALUES (?, ?, ?, ?, ?) ON CONFLICT (identity_key) DO UPDATE SET "
        "endpoints = excluded.endpoints, observed_host = excluded.observed_host, "
        "observed_port = excluded.observed_port, updated_at_ms = excluded.updated_at_ms",
        (identity_key, *encode_endpoints(endpoints), now_ms),
    )


def resolve_endpoints(txn: Txn, identity_key: bytes, *, requester: bytes) -> StoredEndpoints | None:
    # Only for the identity itself or one that shares a group with it in a
    # verified roster: anyone else learns nothing, not even that it exists.
    row = txn.one(
        "SELECT e.endpoints, e.observed_host, e.observed_port FROM endpoints AS e "
        "WHERE e.identity_key = ? AND (e.identity_key = ? OR EXISTS ("
        "SELECT 1 FROM group_members AS mine JOIN group_members AS theirs "
        "ON theirs.group_id = mine.group_id "
        "WHERE mine.identity_key = ? AND theirs.identity_key = e.identity_key))",
        (identity_key, requester, requester),
    )
    return None if row is None else decode_endpoints(row)


def delete_account(txn: Txn, identity_key: bytes, *, now_ms: int) -> None:
    # The name's keys stay, held for the identity; its spelling goes below.
    hold_username(txn, identity_key, now_ms)
    # The queue row first, as every writer of this queue locks it.
    txn.lock_rows("SELECT 1 FROM queues WHERE recipient = ?", (identity_key,))
    txn.execute("DELETE FROM deliveries WHERE recipient = ?", (identity_key,))
    txn.execute("UPDATE queues SET depth = 0 WHERE recipient = ?", (identity_key,))
    for table in ("key_packages", "last_resort", "usernames", "endpoints"):
        txn.execute(f"DELETE FROM {table} WHERE identity_key = ?", (identity_key,))  # noqa: S608 - fixed names
