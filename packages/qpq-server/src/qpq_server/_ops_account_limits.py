"""Per-account token buckets kept in the database, written once for both engines.

A bucket is one row of ``account_limits``: ``full_at``, the time it is full
again (the arithmetic of :mod:`qpq_server._ratelimit`); no row is a full
bucket, so the cleanup removes rows whose ``full_at`` has passed. Rows are
read under their lock and written in the transaction of the work they pay
for, so two nodes of one PostgreSQL database cannot both spend the last
token, and work that is refused (or rolled back) costs nothing.

Kept here: the people an account adds to groups who share no group with it
(``invitations_to_strangers_per_day``; key ``S`` and the account key), and
its renames (``account_renames_per_day``; key ``R``).
"""

from __future__ import annotations

from qpq_proto.errors import RateLimitedError
from qpq_server._accounts import StrangerLimit
from qpq_server._engine import Txn
from qpq_server._ratelimit import take_tokens

__all__ = ["charge_strangers", "strangers_among", "take_account_tokens"]

#: Tokens a comparison forgives: ``full_at`` is a float of seconds.
_SLACK = 1e-6


def take_account_tokens(
    txn: Txn, key: bytes, want: float, *, now: float, rate: float, capacity: float
) -> bool:
    """Take ``want`` tokens of bucket ``key`` if it holds them all; else take none.

    Unlike a call's rate limit, more than the bucket's capacity is never
    granted: it is a limit per day, not a pace.
    """
    row = txn.one("SELECT full_at FROM account_limits WHERE bucket_key = ? FOR UPDATE", (key,))
    full_at = None if row is None else float(row[0])
    granted, after = take_tokens(full_at, now, want, rate, capacity)
    if want > capacity or granted + _SLACK < want:
        return False
    if full_at is None:
        txn.execute("INSERT INTO account_limits (bucket_key, full_at) VALUES (?, ?)", (key, after))
    else:
        txn.execute("UPDATE account_limits SET full_at = ? WHERE bucket_key = ?", (after, key))
    return True


def strangers_among(txn: Txn, inviter: bytes, joiners: tuple[bytes, ...]) -> list[bytes]:
    """Those of ``joiners`` who share no group with ``inviter`` now."""
    shared: set[bytes] = set()
    for where, params in txn.in_list("b.identity_key", joiners):
        shared.update(
            bytes(row[0])
            for row in txn.all(
                "SELECT DISTINCT b.identity_key FROM group_members AS a "  # noqa: S608 - in_list
                "JOIN group_members AS b ON b.group_id = a.group_id "
                f"WHERE a.identity_key = ? AND {where}",
                (inviter, *params),
            )
        )
    return [joiner for joiner in joiners if joiner not in shared]


def charge_strangers(
    txn: Txn, inviter: bytes, joiners: tuple[bytes, ...], limit: StrangerLimit, now: float
) -> None:
    """Pay for the joiners who share no group with the inviter; RateLimitedError if
    the account's bucket cannot (the caller's transaction then stores nothing)."""
    strangers = strangers_among(txn, inviter, joiners)
    if not strangers:
        return
    key = b"S" + limit.account_key
    if not take_account_tokens(
        txn, key, len(strangers), now=now, rate=limit.per_second, capacity=limit.burst
    ):
        raise RateLimitedError(
            f"this account may add at most {limit.burst:g} people a day who share no group "
            f"with it, and this would add {len(strangers)} more than it has left; "
            "try again later",
            field="welcome",
        )
