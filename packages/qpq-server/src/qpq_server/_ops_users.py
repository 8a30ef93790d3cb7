"""Usernames, published endpoints and account deletion."""

from __future__ import annotations

from qpq_proto.errors import AlreadyExistsError
from qpq_server._engine import Txn
from qpq_server._rows import decode_endpoints, encode_endpoints
from qpq_server._storage import StoredEndpoints

__all__ = [
    "delete_account",
    "publish_endpoints",
    "register_username",
    "resolve_endpoints",
    "resolve_identities",
    "resolve_identity",
    "resolve_username",
]


def register_username(
    txn: Txn, identity_key: bytes, username: str, key: str, *, now_ms: int, cooldown_ms: int
) -> str:
    row = txn.one(
        "SELECT identity_key FROM usernames WHERE username_key = ? FOR UPDATE",
        (key,),
    )
    if row is not None and bytes(row[0]) != identity_key:
        raise AlreadyExistsError("username is taken", field="username")
    if row is not None:
        return str(
            txn.value("SELECT username FROM usernames WHERE identity_key = ?", (identity_key,))
        )
    txn.execute("DELETE FROM username_holds WHERE released_at_ms <= ?", (now_ms - cooldown_ms,))
    held = txn.one("SELECT identity_key FROM username_holds WHERE username_key = ?", (key,))
    if held is not None and bytes(held[0]) != identity_key:
        raise AlreadyExistsError(
            "username was given up recently and is still reserved for its owner",
            field="username",
        )
    _hold_username(txn, identity_key, now_ms)
    txn.execute("DELETE FROM username_holds WHERE username_key = ?", (key,))
    txn.execute(
        "INSERT INTO usernames (identity_key, username, username_key) VALUES (?, ?, ?) "
        "ON CONFLICT (identity_key) DO UPDATE SET "
        "username = excluded.username, username_key = excluded.username_key",
        (identity_key, username, key),
    )
    return username


def _hold_username(txn: Txn, identity_key: bytes, now_ms: int) -> None:
    """Reserve the identity's current name, if any, for it (it is being given up)."""
    # The WHERE keeps SQLite from reading ON CONFLICT as part of the SELECT.
    txn.execute(
        "INSERT INTO username_holds (username_key, identity_key, released_at_ms) "
        "SELECT username_key, identity_key, ? FROM usernames WHERE identity_key = ? "
        "ON CONFLICT (username_key) DO UPDATE SET identity_key = excluded.identity_key, "
        "released_at_ms = excluded.released_at_ms",
        (now_ms, identity_key),
    )


def resolve_username(txn: Txn, key: str) -> bytes | None:
    row = txn.one("SELECT identity_key FROM usernames WHERE username_key = ?", (key,))
    return None if row is None else bytes(row[0])


def resolve_identity(txn: Txn, identity_key: bytes) -> str | None:
    row = txn.one("SELECT username FROM usernames WHERE identity_key = ?", (identity_key,))
    return None if row is None else str(row[0])


def resolve_identities(txn: Txn, identity_keys: tuple[bytes, ...]) -> dict[bytes, str]:
    found: dict[bytes, str] = {}
    for condition, params in txn.in_list("identity_key", identity_keys):
        for key, username in txn.all(
            f"SELECT identity_key, username FROM usernames WHERE {condition}",  # noqa: S608 - built by in_list
            params,
        ):
            found[bytes(key)] = str(username)
    return found


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


def resolve_endpoints(txn: Txn, identity_key: bytes) -> StoredEndpoints | None:
    row = txn.one(
        "SELECT endpoints, observed_host, observed_port FROM endpoints WHERE identity_key = ?",
        (identity_key,),
    )
    return None if row is None else decode_endpoints(row)


def delete_account(txn: Txn, identity_key: bytes, *, now_ms: int) -> None:
    _hold_username(txn, identity_key, now_ms)
    # The queue row first, as every writer of this queue locks it.
    txn.lock_rows("SELECT 1 FROM queues WHERE recipient = ?", (identity_key,))
    txn.execute("DELETE FROM deliveries WHERE recipient = ?", (identity_key,))
    txn.execute("UPDATE queues SET depth = 0 WHERE recipient = ?", (identity_key,))
    for table in ("key_packages", "last_resort", "usernames", "endpoints"):
        txn.execute(f"DELETE FROM {table} WHERE identity_key = ?", (identity_key,))  # noqa: S608 - fixed names
