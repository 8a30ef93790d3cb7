"""Usernames: register, resolve both ways, and hold a name given up.

An identity's name is two tables: its spelling (``usernames``, one row per
identity) and the keys of that spelling (``username_keys``, one row per
key, :func:`qpq_server._usernames.username_keys`). A key row belongs to
one identity: the key of its current name (``released_at_ms`` NULL), or of
a name it gave up, held for it since ``released_at_ms``. The key is the
primary key, so the database decides between two registrations of
look-alikes at once: on PostgreSQL the second one's insert of a key the
first inserted fails on COMMIT of the first, and the runner runs it again
(``_postgres._RETRIED``), when it finds the key taken; SQLite has one
writer at a time.
"""

from __future__ import annotations

from qpq_proto.errors import AlreadyExistsError
from qpq_server._engine import Txn
from qpq_server._usernames import username_key, username_keys

__all__ = [
    "hold_username",
    "register_username",
    "resolve_identities",
    "resolve_identity",
    "resolve_username",
]


def _key_rows(
    txn: Txn, keys: tuple[str, ...], *, lock: bool
) -> list[tuple[str, bytes, int | None]]:
    """(key, identity, released at) of the rows of ``keys``."""
    found = []
    for where, params in txn.in_list("key", keys):
        query = f"SELECT key, identity_key, released_at_ms FROM username_keys WHERE {where}"  # noqa: S608 - placeholders
        if lock:
            query += " FOR UPDATE"
        found += [(str(key), bytes(who), released) for key, who, released in txn.all(query, params)]
    return found


def register_username(
    txn: Txn, identity_key: bytes, username: str, *, now_ms: int, cooldown_ms: int
) -> str:
    # Sorted: two registrations inserting the same keys take them in one order.
    keys = tuple(sorted(username_keys(username)))
    for where, params in txn.in_list("key", keys):
        # A name given up longer ago than the cooldown is nobody's any more.
        txn.execute(
            f"DELETE FROM username_keys WHERE {where} AND released_at_ms <= ?",  # noqa: S608 - placeholders
            (*params, now_ms - cooldown_ms),
        )
    found = _key_rows(txn, keys, lock=True)
    others = [released for _key, who, released in found if who != identity_key]
    if any(released is None for released in others):
        raise AlreadyExistsError("username is taken", field="username")
    if others:
        raise AlreadyExistsError(
            "username was given up recently and is still reserved for its owner",
            field="username",
        )
    current = txn.one("SELECT username FROM usernames WHERE identity_key = ?", (identity_key,))
    if current is not None and username_key(str(current[0])) == username_key(username):
        return str(current[0])  # the same name again, in any case: nothing changes
    # The spelling first: its row, once written, makes a registration of the
    # same identity at once on another node wait, so the hold below sees
    # the keys that one stored.
    txn.execute(
        "INSERT INTO usernames (identity_key, username) VALUES (?, ?) "
        "ON CONFLICT (identity_key) DO UPDATE SET username = excluded.username",
        (identity_key, username),
    )
    hold_username(txn, identity_key, now_ms)
    mine = {key for key, _who, _released in found}
    for key in keys:
        if key in mine:
            txn.execute("UPDATE username_keys SET released_at_ms = NULL WHERE key = ?", (key,))
        else:
            # Not ON CONFLICT: a key inserted at once by another registration
            # must fail this one (and be found when it runs again).
            txn.execute(
                "INSERT INTO username_keys (key, identity_key) VALUES (?, ?)", (key, identity_key)
            )
    return username


def hold_username(txn: Txn, identity_key: bytes, now_ms: int) -> None:
    """Hold every key of the identity's current name for it from ``now_ms`` (it is given up)."""
    txn.execute(
        "UPDATE username_keys SET released_at_ms = ? "
        "WHERE identity_key = ? AND released_at_ms IS NULL",
        (now_ms, identity_key),
    )


def resolve_username(txn: Txn, username: str) -> bytes | None:
    """The identity whose current name shares a key with ``username``.

    Its folded key (what it is up to case) first: if that key and the key of
    its look belong to two identities, the first one's is the answer. Every
    registered spelling so resolves to its own identity, and a look-alike
    kept from before schema 8 (``aIice``) to its own, not to the name it
    looks like.
    """
    keys = username_keys(username)
    owners = {
        key: who for key, who, released in _key_rows(txn, keys, lock=False) if released is None
    }
    return next((owners[key] for key in keys if key in owners), None)


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
