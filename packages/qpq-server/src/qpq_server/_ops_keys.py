"""The key directory: single-use KeyPackages, one last-resort package per identity
and ciphersuite, and the claim limits that keep anyone from draining them.

Every package is stored under its MLS ciphersuite (a group takes only
KeyPackages of its own suite) and a claim names the suite; the claim
limits are per target and per (claimer, target), whatever the suite.

A claim of an identity's KeyPackages pays one token from two buckets kept in
the ``key_package_claims`` table (see :class:`~._storage.ClaimLimits`): the
target's, whoever claims, and the (claimer, target) pair's. A bucket is one
row, ``full_at``, the time it is full again (the arithmetic of
:mod:`._ratelimit`); no row is a full bucket, so rows whose ``full_at`` has
passed are removed by the cleanup. The rows are read under their lock and
written in the claim's own transaction: two claims through two nodes of one
PostgreSQL database cannot both spend the last token.
"""

from __future__ import annotations

from qpq_proto import DEFAULT_CIPHERSUITE
from qpq_proto.errors import RateLimitedError
from qpq_server._engine import Txn
from qpq_server._ratelimit import take_tokens
from qpq_server._rows import key_package_limits
from qpq_server._storage import ClaimLimits, KeyPackageStock, StoredKeyPackage

__all__ = [
    "add_key_packages",
    "claim_key_package",
    "count_key_packages",
    "key_package_stock",
    "last_resort_served",
    "set_last_resort",
]

#: Tokens a bucket comparison forgives: ``full_at`` is a float of seconds.
_SLACK = 1e-6
_TARGET_REFUSAL = "this identity's KeyPackages were claimed too often lately; try again later"
_PAIR_REFUSAL = "you claimed this identity's KeyPackages too often lately; try again later"
_ACCOUNT_REFUSAL = "your account claimed as many KeyPackages as it may for now; try again later"


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
        "INSERT INTO key_packages (identity_key, package, fingerprint, not_after, ciphersuite) "
        "VALUES (?, ?, ?, ?, ?)",
        [(identity_key, p.package, p.fingerprint, p.not_after, p.ciphersuite) for p in packages],
    )


def set_last_resort(txn: Txn, identity_key: bytes, package: StoredKeyPackage) -> None:
    # A new last-resort package has been handed out to nobody yet.
    txn.execute(
        "INSERT INTO last_resort "
        "(identity_key, ciphersuite, package, fingerprint, not_after, served) "
        "VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (identity_key, ciphersuite) DO UPDATE SET "
        "package = excluded.package, fingerprint = excluded.fingerprint, "
        "not_after = excluded.not_after, served = 0",
        (
            identity_key,
            package.ciphersuite,
            package.package,
            package.fingerprint,
            package.not_after,
        ),
    )


def claim_key_package(
    txn: Txn,
    identity_key: bytes,
    now_s: int,
    *,
    ciphersuite: int = DEFAULT_CIPHERSUITE,
    claimer: bytes | None = None,
    limits: ClaimLimits | None = None,
    account: bytes | None = None,
) -> bytes | None:
    charges = (
        []
        if limits is None or claimer is None
        else _claim_charges(txn, identity_key, claimer, float(now_s), limits, account=account)
    )
    # Selected and deleted in one statement: two claims never return the same
    # package. On PostgreSQL a row another claim holds is skipped, not waited
    # for. The last resort only when no single-use package is left, and
    # counted, so that its owner sees how often it went out.
    row = txn.one(
        "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages "
        "WHERE identity_key = ? AND ciphersuite = ? AND not_after > ? "
        "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING package",
        (identity_key, ciphersuite, now_s),
    ) or txn.one(
        "UPDATE last_resort SET served = served + 1 "
        "WHERE identity_key = ? AND ciphersuite = ? AND not_after > ? RETURNING package",
        (identity_key, ciphersuite, now_s),
    )
    if row is None:
        return None  # nothing handed out: nothing charged
    for key, full_at, after in charges:
        if full_at is None:
            txn.execute(
                "INSERT INTO key_package_claims (claim_key, full_at) VALUES (?, ?)", (key, after)
            )
        else:
            txn.execute(
                "UPDATE key_package_claims SET full_at = ? WHERE claim_key = ?", (after, key)
            )
    return bytes(row[0])


def _claim_charges(
    txn: Txn,
    target: bytes,
    claimer: bytes,
    now: float,
    limits: ClaimLimits,
    *,
    account: bytes | None = None,
) -> list[tuple[bytes, float | None, float]]:
    """One token from the target's bucket, the pair's and the claiming account's:
    ``(key, full_at, full_at after)`` for each, their rows locked;
    RateLimitedError if any is short.

    The target's bucket is locked first, by every claim of that target: claims
    of one identity through several nodes take turns, and cannot deadlock
    (the account's bucket, the same row for all of one account's claims, is
    taken last). Two claims that both find no row both insert one: one fails
    on the key and its transaction runs again, then finding the other's row.
    """
    buckets = [
        (target, limits.target_burst, limits.target_per_second, _TARGET_REFUSAL),
        (target + claimer, limits.pair_burst, limits.pair_per_second, _PAIR_REFUSAL),
    ]
    if account is not None and limits.account_burst > 0:
        # 33 bytes: apart from the target's (32) and the pair's (64) keys.
        buckets.append(
            (b"A" + account, limits.account_burst, limits.account_per_second, _ACCOUNT_REFUSAL)
        )
    charges = []
    for key, burst, rate, refusal in buckets:
        row = txn.one(
            "SELECT full_at FROM key_package_claims WHERE claim_key = ? FOR UPDATE", (key,)
        )
        full_at = None if row is None else float(row[0])
        granted, after = take_tokens(full_at, now, 1.0, rate, burst)
        if granted + _SLACK < 1.0:
            raise RateLimitedError(refusal, field="identity_key")
        charges.append((key, full_at, after))
    return charges


def count_key_packages(txn: Txn, identity_key: bytes, now_s: int) -> tuple[int, bool]:
    count, last_resort = txn.one(
        "SELECT (SELECT count(*) FROM key_packages WHERE identity_key = ? AND not_after > ?), "
        "EXISTS (SELECT 1 FROM last_resort WHERE identity_key = ? AND not_after > ?)",
        (identity_key, now_s, identity_key, now_s),
    ) or (0, False)
    return int(count), bool(last_resort)


def last_resort_served(
    txn: Txn, identity_key: bytes, ciphersuite: int = DEFAULT_CIPHERSUITE
) -> int:
    row = txn.one(
        "SELECT served FROM last_resort WHERE identity_key = ? AND ciphersuite = ?",
        (identity_key, ciphersuite),
    )
    return 0 if row is None else int(row[0])


def key_package_stock(txn: Txn, identity_key: bytes, now_s: int) -> tuple[KeyPackageStock, ...]:
    counts = {
        int(suite): int(count)
        for suite, count in txn.all(
            "SELECT ciphersuite, count(*) FROM key_packages "
            "WHERE identity_key = ? AND not_after > ? GROUP BY ciphersuite",
            (identity_key, now_s),
        )
    }
    served = {
        int(suite): int(n)
        for suite, n in txn.all(
            "SELECT ciphersuite, served FROM last_resort WHERE identity_key = ? AND not_after > ?",
            (identity_key, now_s),
        )
    }
    return tuple(
        KeyPackageStock(
            ciphersuite=suite,
            count=counts.get(suite, 0),
            has_last_resort=suite in served,
            last_resort_served=served.get(suite, 0),
        )
        for suite in sorted(counts.keys() | served.keys())
    )
