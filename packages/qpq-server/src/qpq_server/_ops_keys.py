"""The key directory: single-use KeyPackages and one last-resort package per identity."""

from __future__ import annotations

from qpq_server._engine import Txn
from qpq_server._rows import key_package_limits
from qpq_server._storage import StoredKeyPackage

__all__ = ["add_key_packages", "claim_key_package", "count_key_packages", "set_last_resort"]


def add_key_packages(
    txn: Txn,
    identity_key: bytes,
    packages: list[StoredKeyPackage],
    max_stored: int,
    max_bytes: int,
) -> None:
    # No row is locked to count under: the count may be passed by one
    # concurrent upload's worth (see Storage).
    stored, stored_bytes = txn.one(
        "SELECT count(*), coalesce(sum(length(package)), 0) FROM key_packages "
        "WHERE identity_key = ?",
        (identity_key,),
    ) or (0, 0)
    key_package_limits(
        int(stored), int(stored_bytes), [p.package for p in packages], max_stored, max_bytes
    )
    txn.executemany(
        "INSERT INTO key_packages (identity_key, package, fingerprint, not_after) "
        "VALUES (?, ?, ?, ?)",
        [(identity_key, p.package, p.fingerprint, p.not_after) for p in packages],
    )


def set_last_resort(txn: Txn, identity_key: bytes, package: StoredKeyPackage) -> None:
    txn.execute(
        "INSERT INTO last_resort (identity_key, package, fingerprint, not_after) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (identity_key) DO UPDATE SET "
        "package = excluded.package, fingerprint = excluded.fingerprint, "
        "not_after = excluded.not_after",
        (identity_key, package.package, package.fingerprint, package.not_after),
    )


def claim_key_package(txn: Txn, identity_key: bytes, now_s: int) -> bytes | None:
    # Selected and deleted in one statement: two claims never return the same
    # package. On PostgreSQL a row another claim holds is skipped, not waited for.
    row = txn.one(
        "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages "
        "WHERE identity_key = ? AND not_after > ? "
        "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING package",
        (identity_key, now_s),
    ) or txn.one(
        "SELECT package FROM last_resort WHERE identity_key = ? AND not_after > ?",
        (identity_key, now_s),
    )
    return None if row is None else bytes(row[0])


def count_key_packages(txn: Txn, identity_key: bytes, now_s: int) -> tuple[int, bool]:
    count, last_resort = txn.one(
        "SELECT (SELECT count(*) FROM key_packages WHERE identity_key = ? AND not_after > ?), "
        "EXISTS (SELECT 1 FROM last_resort WHERE identity_key = ? AND not_after > ?)",
        (identity_key, now_s, identity_key, now_s),
    ) or (0, False)
    return int(count), bool(last_resort)
