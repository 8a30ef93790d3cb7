"""Groups and their fan-out on SQLCipher: the verified state, rosters, queue shares, gaps.

A group's public state (qpq-core's change-set rows), its roster and the
hash of each accepted commit live beside the queues, so a verified commit
advances the state and reaches every queue in ONE transaction: a crash
between "accepted" and "delivered" cannot happen. The epoch check is a
conditional update inside that transaction, so two commits verified
against the same epoch (on one node or several) can never both land.

Each new seq is taken from the recipient's queue row by one upsert, which
holds that row until the transaction ends: seqs of one recipient commit in
seq order with any number of writers. A seq is ``max(last seq + 1, now in
microseconds)`` (``max`` of two values is SQLite's scalar function;
PostgreSQL spells it ``greatest``), so a row removed while idle starts
again above all it handed out. The payload's bytes are charged to the
sender's quota by one conditional upsert of its counter row, the check and
the charge in one statement.
"""

from __future__ import annotations

from typing import Any

from qpq_core import ChangeSet
from qpq_proto import NO_SENDER
from qpq_proto.errors import (
    AlreadyExistsError,
    EpochConflictError,
    ForbiddenError,
    NotFoundError,
)
from qpq_server._cleanup import GROUP_BATCH
from qpq_server._rows import epoch_conflict, groups_quota_exceeded, queued_bytes_exceeded
from qpq_server._sqlcipher_jobs import JobRunner, read_job, write_job
from qpq_server._storage import DAY_MS, Delivered, Delivery, GroupUpdate, seq_floor

__all__ = ["ACCEPTED_COMMITS_KEPT", "GroupStore"]

#: Accepted commits remembered per group (for epochConflict answers and retries).
ACCEPTED_COMMITS_KEPT = 64
#: A group's last use is recorded at most this often (it is kept for many days,
#: so a finer time would only add a write to each publish).
_USE_RESOLUTION_MS = DAY_MS


def _queue_entry(
    cur: Any, recipient: bytes, sender: bytes, payload_id: int, delivery: Delivery
) -> int:
    (seq,) = cur.execute(
        "INSERT INTO queues (recipient, last_seq, depth) VALUES (?, ?, 1) "
        "ON CONFLICT (recipient) DO UPDATE SET last_seq = max(last_seq + 1, excluded.last_seq), "
        "depth = depth + 1 RETURNING last_seq",
        (recipient, max(1, seq_floor(delivery.now_ms))),
    ).fetchone()
    cur.execute(
        "INSERT INTO deliveries (recipient, seq, payload_id, expires_at_ms, sender) "
        "VALUES (?, ?, ?, ?, ?)",
        (recipient, seq, payload_id, delivery.expires_ms, sender),
    )
    cur.execute(
        "INSERT INTO queue_shares (recipient, sender, depth) VALUES (?, ?, 1) "
        "ON CONFLICT (recipient, sender) DO UPDATE SET depth = depth + 1",
        (recipient, sender),
    )
    return int(seq)


def _has_room(cur: Any, recipient: bytes, delivery: Delivery) -> bool:
    row = cur.execute("SELECT depth FROM queues WHERE recipient = ?", (recipient,)).fetchone()
    if row is not None and int(row[0]) >= delivery.depth_cap:
        return False
    row = cur.execute(
        "SELECT depth FROM queue_shares WHERE recipient = ? AND sender = ?",
        (recipient, delivery.sender),
    ).fetchone()
    return row is None or int(row[0]) < delivery.share_cap


def _gap_notice(cur: Any, recipient: bytes, group_id: bytes, delivery: Delivery) -> bool:
    """Queue a gap notice for ``group_id`` unless one is still unacknowledged."""
    if cur.execute(
        "SELECT 1 FROM gaps WHERE recipient = ? AND group_id = ?", (recipient, group_id)
    ).fetchone():
        return False
    (payload_id,) = cur.execute(
        "INSERT INTO payloads (sender, payload, enqueued_at_ms, gap) VALUES (?, ?, ?, 1) "
        "RETURNING id",
        (NO_SENDER, group_id, delivery.now_ms),
    ).fetchone()
    seq = _queue_entry(cur, recipient, NO_SENDER, payload_id, delivery)
    cur.execute(
        "INSERT INTO gaps (recipient, group_id, seq) VALUES (?, ?, ?)", (recipient, group_id, seq)
    )
    return True


def _charge(cur: Any, delivery: Delivery, size: int) -> None:
    """Count ``size`` more bytes queued by the sender, or refuse if over its quota."""
    if size <= delivery.quota_bytes:
        charged = cur.execute(
            "INSERT INTO queued_bytes (sender, bytes) VALUES (?, ?) "
            "ON CONFLICT (sender) DO UPDATE SET bytes = queued_bytes.bytes + excluded.bytes "
            "WHERE queued_bytes.bytes + excluded.bytes <= ? RETURNING bytes",
            (delivery.sender, size, delivery.quota_bytes),
        ).fetchone()
        if charged is not None:
            return
    raise queued_bytes_exceeded(delivery.quota_bytes)


def fan_out(
    cur: Any,
    group_id: bytes,
    recipients: tuple[bytes, ...],
    delivery: Delivery,
    payload: bytes | None = None,
) -> Delivered:
    """Queue ``payload`` (default the delivery's) for each recipient with room; a gap
    notice for the others. The payload is stored once, however many it reaches,
    and charged to the sender's quota once (QuotaExceededError when over it)."""
    content = delivery.payload if payload is None else payload
    payload_id: int | None = None
    seqs: dict[bytes, int] = {}
    gaps: list[bytes] = []
    for recipient in recipients:
        if not _has_room(cur, recipient, delivery):
            if _gap_notice(cur, recipient, group_id, delivery):
                gaps.append(recipient)
            continue
        if payload_id is None:
            _charge(cur, delivery, len(content))
            (payload_id,) = cur.execute(
                "INSERT INTO payloads (sender, payload, enqueued_at_ms) VALUES (?, ?, ?) "
                "RETURNING id",
                (delivery.sender, content, delivery.now_ms),
            ).fetchone()
        seqs[recipient] = _queue_entry(cur, recipient, delivery.sender, payload_id, delivery)
    return Delivered(seqs=seqs, gaps=tuple(gaps))


def _members(cur: Any, group_id: bytes) -> tuple[bytes, ...]:
    return tuple(
        bytes(row[0])
        for row in cur.execute(
            "SELECT identity_key FROM group_members WHERE group_id = ? ORDER BY identity_key",
            (group_id,),
        )
    )


def _write_state(cur: Any, group_id: bytes, state: ChangeSet) -> None:
    for key, value in state:
        if value is None:
            cur.execute("DELETE FROM group_state WHERE group_id = ? AND key = ?", (group_id, key))
        else:
            cur.execute(
                "INSERT INTO group_state (group_id, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (group_id, key) DO UPDATE SET value = excluded.value",
                (group_id, key, value),
            )


def _set_members(cur: Any, group_id: bytes, members: tuple[bytes, ...]) -> None:
    cur.execute("DELETE FROM group_members WHERE group_id = ?", (group_id,))
    cur.executemany(
        "INSERT INTO group_members (group_id, identity_key) VALUES (?, ?)",
        [(group_id, member) for member in members],
    )


class GroupStore(JobRunner):
    """The group operations of the SQLCipher backend (a part of ``SqlCipherStorage``)."""

    _conn: Any

    @write_job(payload="group_info")
    def create_group(
        self,
        cur: Any,
        group_id: bytes,
        *,
        creator: bytes,
        epoch: int,
        members: tuple[bytes, ...],
        state: ChangeSet,
        group_info: bytes,
        now_ms: int,
        max_created: int,
    ) -> None:
        (created,) = cur.execute(
            "SELECT count(*) FROM groups WHERE creator = ?", (creator,)
        ).fetchone()
        if created >= max_created:
            raise groups_quota_exceeded(max_created)
        inserted = cur.execute(
            "INSERT INTO groups (group_id, epoch, group_info, created_at_ms, updated_at_ms, "
            "used_at_ms, creator) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (group_id) DO NOTHING",
            (group_id, epoch, group_info, now_ms, now_ms, now_ms, creator),
        ).rowcount
        if not inserted:
            raise AlreadyExistsError("a group with this id exists", field="group_id")
        _write_state(cur, group_id, state)
        _set_members(cur, group_id, members)

    @read_job
    def group_epoch(self, group_id: bytes) -> int | None:
        row = self._conn.execute(
            "SELECT epoch FROM groups WHERE group_id = ?", (group_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    @read_job
    def group_state(self, group_id: bytes) -> tuple[int, list[tuple[bytes, bytes]]] | None:
        # One read job, so the epoch and the rows are one consistent snapshot.
        row = self._conn.execute(
            "SELECT epoch FROM groups WHERE group_id = ?", (group_id,)
        ).fetchone()
        if row is None:
            return None
        rows = [
            (bytes(key), bytes(value))
            for key, value in self._conn.execute(
                "SELECT key, value FROM group_state WHERE group_id = ?", (group_id,)
            )
        ]
        return int(row[0]), rows

    @read_job
    def group_info(self, group_id: bytes) -> tuple[int, bytes] | None:
        row = self._conn.execute(
            "SELECT epoch, group_info FROM groups WHERE group_id = ?", (group_id,)
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    @read_job
    def group_members(self, group_id: bytes) -> tuple[bytes, ...] | None:
        if self._conn.execute("SELECT 1 FROM groups WHERE group_id = ?", (group_id,)).fetchone():
            return _members(self._conn, group_id)
        return None

    @read_job
    def accepted_commit(self, group_id: bytes, epoch: int) -> bytes | None:
        row = self._conn.execute(
            "SELECT commit_hash FROM group_commits WHERE group_id = ? AND epoch = ?",
            (group_id, epoch),
        ).fetchone()
        return None if row is None else bytes(row[0])

    @write_job(payload="delivery")
    def send_application(
        self, cur: Any, group_id: bytes, *, epoch: int, oldest_epoch: int, delivery: Delivery
    ) -> tuple[int, Delivered]:
        row = cur.execute("SELECT epoch FROM groups WHERE group_id = ?", (group_id,)).fetchone()
        if row is None:
            raise NotFoundError("no such group", field="group_id")
        current = int(row[0])
        members = _members(cur, group_id)
        if delivery.sender not in members:
            raise ForbiddenError("only a current member may send to this group")
        if not current - oldest_epoch <= epoch <= current:
            raise EpochConflictError(
                f"the group is at epoch {current}", field="epoch", epoch=current
            )
        others = tuple(m for m in members if m != delivery.sender)
        cur.execute(
            "UPDATE groups SET used_at_ms = ? WHERE group_id = ? AND used_at_ms < ?",
            (delivery.now_ms, group_id, delivery.now_ms - _USE_RESOLUTION_MS),
        )
        return current, fan_out(cur, group_id, others, delivery)

    @write_job(payload="delivery")
    def apply_group_update(
        self,
        cur: Any,
        group_id: bytes,
        update: GroupUpdate,
        *,
        recipients: tuple[bytes, ...],
        delivery: Delivery,
        welcome: tuple[bytes, tuple[bytes, ...]] | None = None,
    ) -> Delivered:
        moved = cur.execute(
            "UPDATE groups SET epoch = ?, group_info = coalesce(?, group_info), "
            "updated_at_ms = ?, used_at_ms = ? WHERE group_id = ? AND epoch = ?",
            (
                update.epoch,
                update.group_info,
                delivery.now_ms,
                delivery.now_ms,
                group_id,
                update.from_epoch,
            ),
        ).rowcount
        if not moved:
            raise self._conflict(cur, group_id, update.from_epoch)
        _write_state(cur, group_id, update.state)
        if update.members is not None:
            _set_members(cur, group_id, update.members)
        if update.commit_hash is not None:
            cur.execute(
                "INSERT INTO group_commits (group_id, epoch, commit_hash) VALUES (?, ?, ?)",
                (group_id, update.from_epoch, update.commit_hash),
            )
            # This one and the ACCEPTED_COMMITS_KEPT - 1 before it stay.
            cur.execute(
                "DELETE FROM group_commits WHERE group_id = ? AND epoch <= ?",
                (group_id, update.from_epoch - ACCEPTED_COMMITS_KEPT),
            )
        delivered = fan_out(cur, group_id, recipients, delivery)
        if welcome is None:
            return delivered
        message, joiners = welcome
        joined = fan_out(cur, group_id, joiners, delivery, payload=message)
        return Delivered(
            seqs={**delivered.seqs, **joined.seqs}, gaps=(*delivered.gaps, *joined.gaps)
        )

    @write_job()
    def _remove_unused_groups(self, cur: Any, used_before_ms: int) -> int:
        # On a shared database this SELECT must lock the rows it picks
        # (PostgreSQL: FOR UPDATE SKIP LOCKED), so that a publish racing the
        # removal either lands first, and the group stays, or finds it gone;
        # here the write transaction holds the whole database.
        groups = [
            (bytes(row[0]),)
            for row in cur.execute(
                "SELECT group_id FROM groups WHERE used_at_ms < ? LIMIT ?",
                (used_before_ms, GROUP_BATCH),
            )
        ]
        for table in ("group_state", "group_members", "group_commits"):
            cur.executemany(f"DELETE FROM {table} WHERE group_id = ?", groups)  # noqa: S608 - fixed names
        cur.executemany("DELETE FROM groups WHERE group_id = ?", groups)
        return len(groups)

    @staticmethod
    def _conflict(cur: Any, group_id: bytes, epoch: int) -> EpochConflictError | NotFoundError:
        row = cur.execute("SELECT epoch FROM groups WHERE group_id = ?", (group_id,)).fetchone()
        accepted = cur.execute(
            "SELECT commit_hash FROM group_commits WHERE group_id = ? AND epoch = ?",
            (group_id, epoch),
        ).fetchone()
        return epoch_conflict(
            epoch,
            None if row is None else int(row[0]),
            None if accepted is None else bytes(accepted[0]),
        )
