"""Groups: their verified public state, rosters and accepted commits, written once.

A group's public state (qpq-core's change-set rows), its roster and the
hash of each accepted commit live beside the queues, so a verified change
is stored and reaches every queue in ONE transaction: a crash between
"accepted" and "delivered" cannot happen.

Each stored change moves the group's version (:class:`GroupVersion`): a
proposal counts one more in its epoch, a commit starts the next epoch at
0. A change is stored by a conditional update of the group row (``WHERE
epoch = from_epoch AND version = from_version``), so of two changes
verified against one state, on one node or several, only the first lands:
one commit per epoch, and no proposal overwrites another's state rows. On
PostgreSQL a concurrent update waits for the row, sees the new version
when the first commits, and changes nothing. An application message
takes the group row ``FOR SHARE``: sends run side by side, and a change
waits for them, so a send sees one roster and epoch from start to end.
"""

from __future__ import annotations

from qpq_proto.errors import AlreadyExistsError, EpochConflictError, ForbiddenError, NotFoundError
from qpq_server._accounts import Status, StrangerLimit
from qpq_server._engine import Txn
from qpq_server._ops_account_limits import charge_strangers
from qpq_server._ops_accounts import deleted_among
from qpq_server._ops_devices import revoked_among
from qpq_server._ops_queues import fan_out
from qpq_server._rows import epoch_conflict, groups_quota_exceeded
from qpq_server._storage import DAY_MS, Delivered, Delivery, GroupUpdate, GroupVersion

__all__ = [
    "ACCEPTED_COMMITS_KEPT",
    "accepted_commit",
    "apply_group_update",
    "create_group",
    "group_info",
    "group_members",
    "group_state",
    "group_version",
    "replace_group_info",
    "send_application",
]

#: Accepted commits remembered per group (for epochConflict answers and retries).
ACCEPTED_COMMITS_KEPT = 64
#: A group's last use is recorded at most this often (it is kept for many days,
#: so a finer time would only add a write to each publish).
_USE_RESOLUTION_MS = DAY_MS


def create_group(
    txn: Txn,
    group_id: bytes,
    *,
    creator: bytes,
    epoch: int,
    members: tuple[bytes, ...],
    state: tuple[tuple[bytes, bytes | None], ...],
    group_info: bytes,
    now_ms: int,
    max_created: int,
) -> None:
    # The count may be passed by one concurrent creation's worth (see Storage).
    if txn.value("SELECT count(*) FROM groups WHERE creator = ?", (creator,)) >= max_created:
        raise groups_quota_exceeded(max_created)
    if not txn.one(
        "INSERT INTO groups (group_id, epoch, group_info, created_at_ms, updated_at_ms, "
        "used_at_ms, creator) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (group_id) DO NOTHING RETURNING 1",
        (group_id, epoch, group_info, now_ms, now_ms, now_ms, creator),
    ):
        raise AlreadyExistsError("a group with this id exists", field="group_id")
    _write_state(txn, group_id, state)
    _set_members(txn, group_id, members)


def group_version(txn: Txn, group_id: bytes) -> GroupVersion | None:
    row = txn.one("SELECT epoch, version FROM groups WHERE group_id = ?", (group_id,))
    return None if row is None else GroupVersion(int(row[0]), int(row[1]))


def group_state(txn: Txn, group_id: bytes) -> tuple[GroupVersion, list[tuple[bytes, bytes]]] | None:
    # Run as one snapshot: the version and the rows agree.
    version = group_version(txn, group_id)
    if version is None:
        return None
    rows = txn.all("SELECT key, value FROM group_state WHERE group_id = ?", (group_id,))
    return version, [(bytes(key), bytes(value)) for key, value in rows]


def group_info(txn: Txn, group_id: bytes) -> tuple[int, bytes] | None:
    row = txn.one("SELECT epoch, group_info FROM groups WHERE group_id = ?", (group_id,))
    return None if row is None else (int(row[0]), bytes(row[1]))


def replace_group_info(txn: Txn, group_id: bytes, *, epoch: int, group_info: bytes) -> None:
    # Conditional on the epoch alone: a GroupInfo describes the epoch's group
    # context, which a proposal stored meanwhile (a new version) leaves as it was.
    if txn.one(
        "UPDATE groups SET group_info = ? WHERE group_id = ? AND epoch = ? RETURNING 1",
        (group_info, group_id, epoch),
    ):
        return
    current = txn.one("SELECT epoch FROM groups WHERE group_id = ?", (group_id,))
    if current is None:
        raise NotFoundError("no such group", field="group_id")
    raise EpochConflictError(
        f"the group is at epoch {int(current[0])}, not {epoch}",
        field="epoch",
        epoch=int(current[0]),
    )


def group_members(txn: Txn, group_id: bytes) -> tuple[bytes, ...] | None:
    # Run as one snapshot: the group and its roster agree.
    if txn.one("SELECT 1 FROM groups WHERE group_id = ?", (group_id,)) is None:
        return None
    return _members(txn, group_id)


def accepted_commit(txn: Txn, group_id: bytes, epoch: int) -> bytes | None:
    row = txn.one(
        "SELECT commit_hash FROM group_commits WHERE group_id = ? AND epoch = ?", (group_id, epoch)
    )
    return None if row is None else bytes(row[0])


def send_application(
    txn: Txn, group_id: bytes, *, epoch: int, oldest_epoch: int, delivery: Delivery
) -> tuple[int, Delivered]:
    # The rare use-time update first: taken after the share lock it would
    # deadlock two sends that both hold one.
    txn.execute(
        "UPDATE groups SET used_at_ms = ? WHERE group_id = ? AND used_at_ms < ?",
        (delivery.now_ms, group_id, delivery.now_ms - _USE_RESOLUTION_MS),
    )
    row = txn.one("SELECT epoch FROM groups WHERE group_id = ? FOR SHARE", (group_id,))
    if row is None:
        raise NotFoundError("no such group", field="group_id")
    current = int(row[0])
    members = _members(txn, group_id)
    if delivery.sender not in members:
        raise ForbiddenError("only a current member may send to this group")
    if not current - oldest_epoch <= epoch <= current:
        raise EpochConflictError(f"the group is at epoch {current}", field="epoch", epoch=current)
    others = tuple(m for m in members if m != delivery.sender)
    return current, fan_out(txn, group_id, others, delivery)


def apply_group_update(
    txn: Txn,
    group_id: bytes,
    update: GroupUpdate,
    *,
    recipients: tuple[bytes, ...],
    delivery: Delivery,
    welcome: tuple[bytes, tuple[bytes, ...]] | None = None,
    external_joiners: tuple[bytes, ...] = (),
    strangers: StrangerLimit | None = None,
) -> Delivered:
    # A device that joins by external commit is refused once revoked, in the
    # transaction that would store its leaf (as a Welcome's joiners are below).
    if revoked_among(txn, external_joiners):
        raise ForbiddenError("the commit adds a device that was removed from its account")
    if welcome is not None and strangers is not None:
        charge_strangers(txn, delivery.sender, welcome[1], strangers, delivery.now_ms / 1000)
    after = update.version
    if not txn.one(
        "UPDATE groups SET epoch = ?, version = ?, group_info = coalesce(?, group_info), "
        "updated_at_ms = ?, used_at_ms = ? WHERE group_id = ? AND epoch = ? AND version = ? "
        "RETURNING 1",
        (
            after.epoch,
            after.version,
            update.group_info,
            delivery.now_ms,
            delivery.now_ms,
            group_id,
            update.from_epoch,
            update.from_version,
        ),
    ):
        current = txn.one("SELECT epoch FROM groups WHERE group_id = ?", (group_id,))
        raise epoch_conflict(
            update.from_epoch,
            None if current is None else int(current[0]),
            accepted_commit(txn, group_id, update.from_epoch),
        )
    _write_state(txn, group_id, update.state)
    if update.members is not None:
        _set_members(txn, group_id, update.members)
    if update.commit_hash is not None:
        txn.execute(
            "INSERT INTO group_commits (group_id, epoch, commit_hash) VALUES (?, ?, ?)",
            (group_id, update.from_epoch, update.commit_hash),
        )
        # This one and the ACCEPTED_COMMITS_KEPT - 1 before it stay.
        txn.execute(
            "DELETE FROM group_commits WHERE group_id = ? AND epoch <= ?",
            (group_id, update.from_epoch - ACCEPTED_COMMITS_KEPT),
        )
    # A deleted account's leaves stay in the MLS state until a member commits
    # their removal; until then nothing more is queued for it.
    gone = deleted_among(txn, (*recipients, *(welcome[1] if welcome else ())))
    recipients = tuple(r for r in recipients if r not in gone)
    delivered = fan_out(
        txn, group_id, recipients, delivery, group_info_digest=update.group_info_digest
    )
    if welcome is None:
        return delivered
    message, joiners = welcome
    # A removed device never comes back: a commit that adds it again (its
    # leaf would carry a certificate still valid under the account key) is
    # refused, in the transaction that would store it.
    if revoked_among(txn, joiners):
        raise ForbiddenError("the commit adds a device that was removed from its account")
    joiners = tuple(j for j in joiners if j not in gone)
    joined = fan_out(txn, group_id, joiners, delivery, payload=message)
    # Two payloads (the commit, its Welcome): readers read them back from the queues.
    return Delivered(seqs={**delivered.seqs, **joined.seqs}, gaps=(*delivered.gaps, *joined.gaps))


def _members(txn: Txn, group_id: bytes) -> tuple[bytes, ...]:
    rows = txn.all(
        "SELECT identity_key FROM group_members WHERE group_id = ? ORDER BY identity_key",
        (group_id,),
    )
    return tuple(bytes(row[0]) for row in rows)


def _write_state(txn: Txn, group_id: bytes, state: tuple[tuple[bytes, bytes | None], ...]) -> None:
    # A change set names each key once (qpq-core's journal): deletions and
    # writes may go in two batches.
    txn.executemany(
        "DELETE FROM group_state WHERE group_id = ? AND key = ?",
        [(group_id, key) for key, value in state if value is None],
    )
    txn.executemany(
        "INSERT INTO group_state (group_id, key, value) VALUES (?, ?, ?) "
        "ON CONFLICT (group_id, key) DO UPDATE SET value = excluded.value",
        [(group_id, key, value) for key, value in state if value is not None],
    )


def _set_members(txn: Txn, group_id: bytes, members: tuple[bytes, ...]) -> None:
    # The members messages are fanned out to: the roster but deleted accounts
    # and removed devices, whose leaves a member removes with a later commit.
    txn.execute("DELETE FROM group_members WHERE group_id = ?", (group_id,))
    txn.executemany(
        "INSERT INTO group_members (group_id, identity_key) SELECT ?, ? WHERE NOT EXISTS "
        "(SELECT 1 FROM account_identities AS i JOIN accounts AS a "
        "ON a.account_key = i.account_key WHERE i.identity_key = ? "
        "AND (a.status = ? OR i.revoked_at_ms IS NOT NULL))",
        [(group_id, member, member, Status.DELETED.value) for member in members],
    )
