"""Accounts, written once for both engines: registration, status, deletion, lookups.

A registration (:func:`register_account`) either creates the account of an
identity that has none, using up its invite code in the same transaction
(a name that turns out to be taken rolls the code's use back), or renames
the account it has. A status change (:func:`set_status`) moves the
``account_version`` counter, whose value the account's row records: every
node polls the counter and closes the connections of identities whose
account stopped being active (:mod:`qpq_server._account_watch`).

Deleting an account (:func:`delete_account`) removes its queue, KeyPackages,
endpoints and username (held for the cooldown, as on a rename), takes its
identities off every group's list of recipients (``group_members``: nothing
is fanned out to it any more, although its leaves stay in the groups' MLS
state until a member commits their removal), marks it deleted, and queues
a deletion notice for each other member of each group it was in: an
envelope naming the deleted identity and the group (docs/protocol.md 4),
after which the first member online commits the removal of its leaves.
The group rows are locked first, in order, as a publish takes them before
the queues it writes.
"""

from __future__ import annotations

from typing import Any

from qpq_proto import DEFAULT_LIMITS, NO_SENDER
from qpq_proto.errors import ForbiddenError, NotFoundError, RateLimitedError
from qpq_server import _ops_usernames, _ops_users
from qpq_server._accounts import (
    AccountRecord,
    AccountState,
    AccountUsage,
    Deleted,
    Registered,
    Registration,
    Status,
    StatusChange,
)
from qpq_server._engine import Txn
from qpq_server._ops_account_limits import take_account_tokens
from qpq_server._ops_invites import use_invite
from qpq_server._ops_queues import lock_queues, queue_for
from qpq_server._rows import DELETION_NOTICE
from qpq_server._storage import Delivery
from qpq_server._usernames import username_key

__all__ = [
    "INVITE_NEEDED",
    "account_counts",
    "account_of",
    "account_usage",
    "account_version",
    "delete_account",
    "deleted_among",
    "deletion_notice",
    "find_account",
    "list_accounts",
    "name_statuses",
    "refusal",
    "register_account",
    "set_status",
    "status_changes",
]

INVITE_NEEDED = (
    "this server registers people by invitation: ask its operator for an invite code "
    "(qpq init --invite CODE)"
)

_DAY_S = 24 * 3600
# A revoked device reads as revoked whatever its account's status.
_ACCOUNT_OF = (
    "SELECT a.account_key, CASE WHEN i.revoked_at_ms IS NULL THEN a.status ELSE 'revoked' END, "
    "a.reason FROM account_identities AS i "
    "JOIN accounts AS a ON a.account_key = i.account_key WHERE i.identity_key = ?"
)
_RECORD = (
    "SELECT a.account_key, u.username, a.status, a.reason, a.created_at_ms, "
    "a.changed_at_ms, a.invite_id, coalesce(v.note, '') FROM accounts AS a "
    "LEFT JOIN usernames AS u ON u.identity_key = a.account_key "
    "LEFT JOIN invites AS v ON v.id = a.invite_id"
)


def refusal(state: AccountState) -> ForbiddenError:
    """The one-line refusal of a call by an account that is not active."""
    if state.status is Status.REVOKED:
        return ForbiddenError(
            "this device was removed from its account; it cannot be used again (link it anew)"
        )
    if state.status is Status.DELETED:
        return ForbiddenError("this account was deleted; it cannot be used again")
    reason = f": {state.reason}" if state.reason else ""
    return ForbiddenError(f"this account is suspended{reason}")


def _state(row: tuple[Any, ...] | None) -> AccountState | None:
    if row is None:
        return None
    return AccountState(bytes(row[0]), Status(str(row[1])), str(row[2]))


def account_of(txn: Txn, identity_key: bytes) -> AccountState | None:
    """The account ``identity_key`` acts for, or None (it never registered)."""
    return _state(txn.one(_ACCOUNT_OF, (identity_key,)))


def register_account(txn: Txn, registration: Registration) -> Registered:
    identity = registration.identity_key
    # Locked: two registrations of one identity through two nodes take turns
    # (and one that both found no account loses the INSERT race and runs again).
    state = _state(txn.one(f"{_ACCOUNT_OF} FOR UPDATE OF a", (identity,)))
    if state is not None:
        if not state.active:
            raise refusal(state)
        _charge_rename(txn, state.account_key, registration)
        # Any device renames its account: the name is the account key's.
        _ops_usernames.register_username(
            txn,
            state.account_key,
            registration.username,
            now_ms=registration.now_ms,
            cooldown_ms=registration.cooldown_ms,
        )
        return Registered(account_key=state.account_key, created=False)
    invite_id: int | None = None
    if registration.invite_hash is not None:
        invite_id = use_invite(txn, registration.invite_hash, registration.now_ms)
    elif registration.invite_required:
        raise ForbiddenError(INVITE_NEEDED, field="invite")
    # A taken name raises here and the whole transaction, the invite's use
    # with it, is undone: a refused registration costs no code.
    _ops_usernames.register_username(
        txn,
        identity,
        registration.username,
        now_ms=registration.now_ms,
        cooldown_ms=registration.cooldown_ms,
    )
    txn.execute(
        "INSERT INTO accounts (account_key, status, created_at_ms, changed_at_ms, invite_id) "
        "VALUES (?, ?, ?, ?, ?)",
        (identity, Status.ACTIVE.value, registration.now_ms, registration.now_ms, invite_id),
    )
    # Today an account is its one identity: the account key is the identity key.
    txn.execute(
        "INSERT INTO account_identities (identity_key, account_key) VALUES (?, ?)",
        (identity, identity),
    )
    return Registered(account_key=identity, created=True, invite_id=invite_id)


def _charge_rename(txn: Txn, account_key: bytes, registration: Registration) -> None:
    """Pay for a rename that changes the name from the account's bucket (``R``)."""
    per_day = registration.renames_per_day
    if per_day <= 0:
        return
    current = txn.one("SELECT username FROM usernames WHERE identity_key = ?", (account_key,))
    if current is not None and username_key(str(current[0])) == username_key(registration.username):
        return  # the same name again (in any case): nothing is given up
    if not take_account_tokens(
        txn,
        b"R" + account_key,
        1.0,
        now=registration.now_ms / 1000,
        rate=per_day / _DAY_S,
        capacity=per_day,
    ):
        raise RateLimitedError(
            f"this account may take another name {per_day:g} times a day; try again later",
            field="username",
        )


def _bump_version(txn: Txn) -> int:
    """The next value of the status counter; its row lock orders status changes."""
    return int(
        txn.value("UPDATE account_version SET version = version + 1 WHERE id = 1 RETURNING version")
    )


def set_status(
    txn: Txn, account_key: bytes, status: Status, *, reason: str, now_ms: int
) -> AccountRecord:
    """Suspend or reactivate an account; NotFoundError if there is none (or it is deleted)."""
    # The account's row first, then the counter, in the order a deletion takes them.
    txn.lock_rows("SELECT 1 FROM accounts WHERE account_key = ?", (account_key,))
    version = _bump_version(txn)
    if not txn.one(
        "UPDATE accounts SET status = ?, reason = ?, changed_at_ms = ?, status_version = ? "
        "WHERE account_key = ? AND status <> ? RETURNING 1",
        (status.value, reason, now_ms, version, account_key, Status.DELETED.value),
    ):
        raise NotFoundError("no such account (or it was deleted)", field="username")
    record = _record(txn, account_key)
    if record is None:  # updated just above
        raise NotFoundError("no such account", field="username")
    return record


def deletion_notice(identity_key: bytes, now_ms: int, ttl_ms: int, depth_cap: int) -> Delivery:
    """How the deletion notices of ``identity_key`` are queued: at ``now_ms``,
    kept ``ttl_ms`` (the message TTL), only where a queue holds fewer than
    ``depth_cap``."""
    return Delivery(
        sender=NO_SENDER,
        payload=identity_key,
        now_ms=now_ms,
        expires_ms=now_ms + ttl_ms,
        depth_cap=depth_cap,
        share_cap=depth_cap,
        quota_bytes=0,
    )


def delete_account(
    txn: Txn,
    identity_key: bytes,
    *,
    now_ms: int,
    reason: str = "",
    notice: Delivery | None = None,
) -> Deleted:
    """Delete the account ``identity_key`` acts for; see the module docstring.

    ``now_ms``: when (the username's cooldown starts then); ``notice``: how
    the deletion notices are queued (:func:`deletion_notice`; by default
    with the protocol's default TTL and queue depth).
    """
    if notice is None:
        notice = deletion_notice(
            identity_key,
            now_ms,
            DEFAULT_LIMITS.message_ttl_seconds * 1000,
            DEFAULT_LIMITS.queue_depth,
        )
    state = _state(txn.one(f"{_ACCOUNT_OF} FOR UPDATE OF a", (identity_key,)))
    account = identity_key if state is None else state.account_key
    # Every device of the account goes with it (docs/protocol.md, "Devices").
    identities = (
        identity_key,
        *(
            bytes(row[0])
            for row in txn.all(
                "SELECT identity_key FROM account_identities WHERE account_key = ? "
                "AND identity_key <> ? ORDER BY identity_key",
                (account, identity_key),
            )
        ),
    )
    memberships = [
        (bytes(row[0]), identity)
        for identity in identities
        for row in txn.all(
            "SELECT group_id FROM group_members WHERE identity_key = ? ORDER BY group_id",
            (identity,),
        )
    ]
    groups = tuple(sorted({group_id for group_id, _identity in memberships}))
    for group_id in groups:
        txn.lock_rows("SELECT 1 FROM groups WHERE group_id = ?", (group_id,))
    for identity in identities:
        _ops_users.delete_account(txn, identity, now_ms=now_ms)
        txn.execute("DELETE FROM group_members WHERE identity_key = ?", (identity,))
    version = _bump_version(txn)
    if state is None:
        txn.execute(
            "INSERT INTO accounts (account_key, status, reason, created_at_ms, changed_at_ms, "
            "status_version) VALUES (?, ?, ?, ?, ?, ?)",
            (account, Status.DELETED.value, reason, now_ms, now_ms, version),
        )
        txn.execute(
            "INSERT INTO account_identities (identity_key, account_key) VALUES (?, ?)",
            (identity_key, account),
        )
    else:
        txn.execute(
            "UPDATE accounts SET status = ?, reason = ?, changed_at_ms = ?, status_version = ? "
            "WHERE account_key = ?",
            (Status.DELETED.value, reason, now_ms, version, account),
        )
    notified: list[bytes] = []
    for group_id in groups:
        members = tuple(
            bytes(row[0])
            for row in txn.all(
                "SELECT identity_key FROM group_members WHERE group_id = ? ORDER BY identity_key",
                (group_id,),
            )
        )
        for member_group, identity in memberships:
            if member_group == group_id:
                notified += _notice(txn, group_id, members, identity, notice)
    return Deleted(account_key=account, groups=groups, notified=tuple(dict.fromkeys(notified)))


def _notice(
    txn: Txn, group_id: bytes, members: tuple[bytes, ...], deleted: bytes, notice: Delivery
) -> list[bytes]:
    """Queue one deletion notice for the members with room in their queue.

    A member whose queue is full gets none: it holds a gap notice (or will),
    rejoins, and finds the account's leaves when it next commits anyway.
    """
    depths, _shares = lock_queues(txn, list(members), NO_SENDER)
    room = [m for m in members if depths[m] < notice.depth_cap]
    if not room:
        return []
    payload_id = txn.value(
        "INSERT INTO payloads (sender, payload, enqueued_at_ms, gap, group_id) "
        "VALUES (?, ?, ?, ?, ?) RETURNING id",
        (NO_SENDER, deleted, notice.now_ms, DELETION_NOTICE, group_id),
    )
    return list(queue_for(txn, room, NO_SENDER, int(payload_id), notice))


def deleted_among(txn: Txn, identity_keys: tuple[bytes, ...]) -> set[bytes]:
    """Those of ``identity_keys`` whose account is deleted, or that are revoked
    devices (they get nothing any more)."""
    found: set[bytes] = set()
    for where, params in txn.in_list("i.identity_key", identity_keys):
        found.update(
            bytes(row[0])
            for row in txn.all(
                "SELECT i.identity_key FROM account_identities AS i "  # noqa: S608 - in_list
                "JOIN accounts AS a ON a.account_key = i.account_key "
                f"WHERE {where} AND (a.status = ? OR i.revoked_at_ms IS NOT NULL)",
                (*params, Status.DELETED.value),
            )
        )
    return found


def name_statuses(
    txn: Txn, identity_keys: tuple[bytes, ...]
) -> dict[bytes, tuple[str, Status | None]]:
    """The username (or "") and account status (None: no account) of each key that has either."""
    names = _ops_usernames.resolve_identities(txn, identity_keys)
    found: dict[bytes, tuple[str, Status | None]] = {
        key: (name, None) for key, name in names.items()
    }
    for where, params in txn.in_list("i.identity_key", identity_keys):
        for key, status in txn.all(
            "SELECT i.identity_key, a.status FROM account_identities AS i "  # noqa: S608 - in_list
            f"JOIN accounts AS a ON a.account_key = i.account_key WHERE {where}",
            params,
        ):
            name, _none = found.get(bytes(key), ("", None))
            found[bytes(key)] = (name, Status(str(status)))
    return found


def _records(rows: list[tuple[Any, ...]]) -> list[AccountRecord]:
    return [
        AccountRecord(
            account_key=bytes(row[0]),
            username=None if row[1] is None else str(row[1]),
            status=Status(str(row[2])),
            reason=str(row[3]),
            created_at_ms=int(row[4]),
            changed_at_ms=int(row[5]),
            invite_id=None if row[6] is None else int(row[6]),
            invite_note=str(row[7]),
        )
        for row in rows
    ]


def _record(txn: Txn, account_key: bytes) -> AccountRecord | None:
    found = _records(txn.all(f"{_RECORD} WHERE a.account_key = ?", (account_key,)))
    return found[0] if found else None


def list_accounts(txn: Txn) -> list[AccountRecord]:
    """Every account, the deleted ones too, oldest first."""
    return _records(txn.all(f"{_RECORD} ORDER BY a.created_at_ms, a.account_key"))


def find_account(txn: Txn, username: str) -> AccountRecord | None:
    """The account registered under ``username`` (as a lookup of the name finds it)."""
    identity = _ops_usernames.resolve_username(txn, username)
    if identity is None:
        return None
    state = account_of(txn, identity)
    return _record(txn, identity if state is None else state.account_key)


def account_usage(txn: Txn, account_key: bytes) -> AccountUsage:
    """What the account holds on the server now."""
    identities = [
        bytes(row[0])
        for row in txn.all(
            "SELECT identity_key FROM account_identities WHERE account_key = ?", (account_key,)
        )
    ] or [account_key]
    groups = queued = packages = 0
    for identity in identities:
        groups += int(
            txn.value("SELECT count(*) FROM group_members WHERE identity_key = ?", (identity,))
        )
        queued += int(txn.value("SELECT count(*) FROM deliveries WHERE recipient = ?", (identity,)))
        packages += int(
            txn.value("SELECT count(*) FROM key_packages WHERE identity_key = ?", (identity,))
        )
    created = int(txn.value("SELECT count(*) FROM groups WHERE creator = ?", (account_key,)))
    held = txn.one("SELECT bytes FROM queued_bytes WHERE sender = ?", (account_key,))
    return AccountUsage(
        groups=groups,
        groups_created=created,
        queued_messages=queued,
        queued_bytes=0 if held is None else int(held[0]),
        key_packages=packages,
    )


def account_counts(txn: Txn) -> dict[Status, int]:
    """Accounts by status (for metrics: counts only, never names)."""
    counts: dict[Status, int] = dict.fromkeys((s for s in Status if s is not Status.REVOKED), 0)
    for status, count in txn.all("SELECT status, count(*) FROM accounts GROUP BY status"):
        counts[Status(str(status))] = int(count)
    return counts


def account_version(txn: Txn) -> int:
    """The status counter: it moves with every suspension, reactivation and deletion."""
    return int(txn.value("SELECT version FROM account_version WHERE id = 1"))


def status_changes(txn: Txn, after_version: int) -> list[StatusChange]:
    """Every identity whose account's status changed after ``after_version``,
    and every device revoked since (as revoked)."""
    return [
        StatusChange(identity_key=bytes(key), status=Status(str(status)), reason=str(reason))
        for key, status, reason in txn.all(
            "SELECT i.identity_key, "
            "CASE WHEN i.revoked_at_ms IS NULL THEN a.status ELSE 'revoked' END, a.reason "
            "FROM accounts AS a JOIN account_identities AS i ON i.account_key = a.account_key "
            "WHERE a.status_version > ? OR i.revoked_version > ? "
            "ORDER BY a.status_version",
            (after_version, after_version),
        )
    ]
