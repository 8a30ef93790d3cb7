"""Groups and their fan-out on PostgreSQL: the verified state, rosters, queue shares, gaps.

The same rules as the SQLCipher backend (:mod:`._sqlcipher_groups`), kept by
row locks instead of one writer holding the whole database:

- A commit advances the group by a conditional update (``WHERE epoch =
  from_epoch``). A concurrent one for the same epoch waits for the row, sees
  the new epoch when the first commits, and changes nothing: one commit per
  epoch, on any number of nodes.
- An application message takes the group row ``FOR SHARE``: sends run side
  by side, and a commit (which updates the row) waits for them, so a send
  sees one roster and epoch from start to end.
- A fan-out locks its recipients' queue rows in one order (creating missing
  ones first, in that order), so two fan-outs cannot deadlock on them, and
  reads each queue's depth under its lock: the depth and share caps hold
  exactly under concurrent senders. A seq is taken from the locked row by
  the upsert that bumps it, so one recipient's seqs commit in seq order.
- Each recipient woken is announced with ``pg_notify`` in the same
  transaction: PostgreSQL delivers it to every node's listener only if and
  when the transaction commits.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncCursor

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
from qpq_server._sqlcipher_groups import ACCEPTED_COMMITS_KEPT
from qpq_server._storage import DAY_MS, Delivered, Delivery, GroupUpdate, seq_floor

__all__ = ["DELIVERY_CHANNEL", "PostgresGroups"]

Cursor = AsyncCursor[tuple[Any, ...]]

#: The notification channel of stored deliveries; the payload is the recipient in hex.
DELIVERY_CHANNEL = "qpq_deliveries"
#: A group's last use is recorded at most this often (as on SQLCipher).
_USE_RESOLUTION_MS = DAY_MS


async def _one(cur: Cursor, query: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    await cur.execute(query, params)
    return await cur.fetchone()


class _Queues:
    """The recipients' queue rows, locked for one fan-out, with their depths."""

    def __init__(self, depths: dict[bytes, int], shares: dict[bytes, int]) -> None:
        self.depths = depths
        self.shares = shares

    @classmethod
    async def lock(cls, cur: Cursor, recipients: tuple[bytes, ...], sender: bytes) -> _Queues:
        ordered = sorted(set(recipients))
        depths: dict[bytes, int] = {}
        shares: dict[bytes, int] = {}
        missing = ordered
        while missing:
            # A row created here (depth 0) is used by this fan-out or rolled
            # back with it. A row the cleanup removes between this INSERT and
            # the lock below is missed by the lock: insert it again.
            await cur.execute(
                "INSERT INTO queues (recipient, last_seq, depth) "
                "SELECT r, 0, 0 FROM unnest(%s::bytea[]) AS r ORDER BY r "
                "ON CONFLICT (recipient) DO NOTHING",
                (missing,),
            )
            # Each queue's depth, and the sender's share of it, under the queue's lock.
            await cur.execute(
                "SELECT q.recipient, q.depth, s.depth FROM queues AS q "
                "LEFT JOIN queue_shares AS s ON s.recipient = q.recipient AND s.sender = %s "
                "WHERE q.recipient = ANY(%s) ORDER BY q.recipient FOR UPDATE OF q",
                (sender, missing),
            )
            for recipient, depth, share in await cur.fetchall():
                depths[bytes(recipient)] = int(depth)
                if share is not None:
                    shares[bytes(recipient)] = int(share)
            missing = [r for r in missing if r not in depths]
        return cls(depths, shares)

    def has_room(self, recipient: bytes, delivery: Delivery) -> bool:
        return (
            self.depths.get(recipient, 0) < delivery.depth_cap
            and self.shares.get(recipient, 0) < delivery.share_cap
        )

    async def entries(
        self,
        cur: Cursor,
        recipients: list[bytes],
        sender: bytes,
        payload_id: int,
        delivery: Delivery,
    ) -> dict[bytes, int]:
        """Queue ``payload_id`` for each of ``recipients`` (distinct, rows locked): their seqs.

        One statement whatever the number of recipients: each row's seq is
        bumped under the lock this transaction holds, its delivery and the
        sender's share recorded, and the recipient announced (on COMMIT).
        """
        await cur.execute(
            "WITH q AS (UPDATE queues SET last_seq = greatest(last_seq + 1, %(floor)s), "
            "depth = depth + 1 WHERE recipient = ANY(%(recipients)s) "
            "RETURNING recipient, last_seq), "
            "d AS (INSERT INTO deliveries (recipient, seq, payload_id, expires_at_ms, sender) "
            "SELECT recipient, last_seq, %(payload)s, %(expires)s, %(sender)s FROM q), "
            "s AS (INSERT INTO queue_shares (recipient, sender, depth) "
            "SELECT recipient, %(sender)s, 1 FROM q "
            "ON CONFLICT (recipient, sender) DO UPDATE SET depth = queue_shares.depth + 1) "
            "SELECT recipient, last_seq, pg_notify(%(channel)s, encode(recipient, 'hex')) FROM q",
            {
                "floor": max(1, seq_floor(delivery.now_ms)),
                "recipients": recipients,
                "payload": payload_id,
                "expires": delivery.expires_ms,
                "sender": sender,
                "channel": DELIVERY_CHANNEL,
            },
        )
        seqs = {bytes(r): int(seq) for r, seq, _notified in await cur.fetchall()}
        if len(seqs) != len(recipients):  # every row was locked above: it exists
            raise RuntimeError("a queue row vanished while locked")
        for recipient in recipients:
            self.depths[recipient] = self.depths.get(recipient, 0) + 1
            if sender == delivery.sender:
                self.shares[recipient] = self.shares.get(recipient, 0) + 1
        return {recipient: seqs[recipient] for recipient in recipients}

    async def gap_notice(
        self, cur: Cursor, recipient: bytes, group_id: bytes, delivery: Delivery
    ) -> bool:
        """Queue a gap notice for ``group_id`` unless one is still unacknowledged."""
        if await _one(
            cur,
            "SELECT 1 FROM gaps WHERE recipient = %s AND group_id = %s",
            (recipient, group_id),
        ):
            return False
        row = await _one(
            cur,
            "INSERT INTO payloads (sender, payload, enqueued_at_ms, gap) VALUES (%s, %s, %s, 1) "
            "RETURNING id",
            (NO_SENDER, group_id, delivery.now_ms),
        )
        if row is None:
            raise RuntimeError("INSERT ... RETURNING returned no row")
        (seq,) = (await self.entries(cur, [recipient], NO_SENDER, int(row[0]), delivery)).values()
        await cur.execute(
            "INSERT INTO gaps (recipient, group_id, seq) VALUES (%s, %s, %s)",
            (recipient, group_id, seq),
        )
        return True


async def _charge(cur: Cursor, delivery: Delivery, size: int) -> None:
    """Count ``size`` more bytes queued by the sender, or refuse if over its quota."""
    if size <= delivery.quota_bytes:
        charged = await _one(
            cur,
            "INSERT INTO queued_bytes (sender, bytes) VALUES (%s, %s) "
            "ON CONFLICT (sender) DO UPDATE SET bytes = queued_bytes.bytes + excluded.bytes "
            "WHERE queued_bytes.bytes + excluded.bytes <= %s RETURNING bytes",
            (delivery.sender, size, delivery.quota_bytes),
        )
        if charged is not None:
            return
    raise queued_bytes_exceeded(delivery.quota_bytes)


async def fan_out(
    cur: Cursor,
    group_id: bytes,
    recipients: tuple[bytes, ...],
    delivery: Delivery,
    payload: bytes | None = None,
) -> Delivered:
    """Queue ``payload`` (default the delivery's) for each recipient with room, a gap
    notice for the others; each recipient woken is announced on COMMIT."""
    content = delivery.payload if payload is None else payload
    # Each recipient once (a roster names each member once).
    targets = list(dict.fromkeys(recipients))
    queues = await _Queues.lock(cur, tuple(targets), delivery.sender)
    room = [recipient for recipient in targets if queues.has_room(recipient, delivery)]
    full = set(targets).difference(room)
    gaps: list[bytes] = []
    for recipient in targets:
        if recipient in full and await queues.gap_notice(cur, recipient, group_id, delivery):
            gaps.append(recipient)
    seqs: dict[bytes, int] = {}
    if room:
        await _charge(cur, delivery, len(content))
        row = await _one(
            cur,
            "INSERT INTO payloads (sender, payload, enqueued_at_ms) VALUES (%s, %s, %s) "
            "RETURNING id",
            (delivery.sender, content, delivery.now_ms),
        )
        if row is None:
            raise RuntimeError("INSERT ... RETURNING returned no row")
        seqs = await queues.entries(cur, room, delivery.sender, int(row[0]), delivery)
    return Delivered(seqs=seqs, gaps=tuple(gaps))


async def _members(cur: Cursor, group_id: bytes) -> tuple[bytes, ...]:
    await cur.execute(
        "SELECT identity_key FROM group_members WHERE group_id = %s ORDER BY identity_key",
        (group_id,),
    )
    return tuple(bytes(row[0]) for row in await cur.fetchall())


async def _write_state(cur: Cursor, group_id: bytes, state: ChangeSet) -> None:
    for key, value in state:
        if value is None:
            await cur.execute(
                "DELETE FROM group_state WHERE group_id = %s AND key = %s", (group_id, key)
            )
        else:
            await cur.execute(
                "INSERT INTO group_state (group_id, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (group_id, key) DO UPDATE SET value = excluded.value",
                (group_id, key, value),
            )


async def _set_members(cur: Cursor, group_id: bytes, members: tuple[bytes, ...]) -> None:
    await cur.execute("DELETE FROM group_members WHERE group_id = %s", (group_id,))
    await cur.executemany(
        "INSERT INTO group_members (group_id, identity_key) VALUES (%s, %s)",
        [(group_id, member) for member in members],
    )


async def _conflict(cur: Cursor, group_id: bytes, epoch: int) -> EpochConflictError | NotFoundError:
    row = await _one(cur, "SELECT epoch FROM groups WHERE group_id = %s", (group_id,))
    accepted = await _one(
        cur,
        "SELECT commit_hash FROM group_commits WHERE group_id = %s AND epoch = %s",
        (group_id, epoch),
    )
    return epoch_conflict(
        epoch,
        None if row is None else int(row[0]),
        None if accepted is None else bytes(accepted[0]),
    )


class PostgresGroups:
    """The group operations of the PostgreSQL backend, as transaction bodies.

    Each ``*_tx`` method takes the cursor of a transaction the caller runs
    (and retries on a serialization failure or deadlock).
    """

    @staticmethod
    async def create_group_tx(
        cur: Cursor,
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
        row = await _one(cur, "SELECT count(*) FROM groups WHERE creator = %s", (creator,))
        if row is not None and int(row[0]) >= max_created:
            raise groups_quota_exceeded(max_created)
        inserted = await _one(
            cur,
            "INSERT INTO groups (group_id, epoch, group_info, created_at_ms, updated_at_ms, "
            "used_at_ms, creator) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (group_id) DO NOTHING RETURNING 1",
            (group_id, epoch, group_info, now_ms, now_ms, now_ms, creator),
        )
        if inserted is None:
            raise AlreadyExistsError("a group with this id exists", field="group_id")
        await _write_state(cur, group_id, state)
        await _set_members(cur, group_id, members)

    @staticmethod
    async def group_state_tx(
        cur: Cursor, group_id: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]]] | None:
        row = await _one(cur, "SELECT epoch FROM groups WHERE group_id = %s", (group_id,))
        if row is None:
            return None
        await cur.execute("SELECT key, value FROM group_state WHERE group_id = %s", (group_id,))
        return int(row[0]), [(bytes(k), bytes(v)) for k, v in await cur.fetchall()]

    @staticmethod
    async def group_members_tx(cur: Cursor, group_id: bytes) -> tuple[bytes, ...] | None:
        if await _one(cur, "SELECT 1 FROM groups WHERE group_id = %s", (group_id,)) is None:
            return None
        return await _members(cur, group_id)

    @staticmethod
    async def send_application_tx(
        cur: Cursor, group_id: bytes, *, epoch: int, oldest_epoch: int, delivery: Delivery
    ) -> tuple[int, Delivered]:
        # The rare use-time update first: taken after the share lock it would
        # deadlock two sends that both hold one.
        await cur.execute(
            "UPDATE groups SET used_at_ms = %s WHERE group_id = %s AND used_at_ms < %s",
            (delivery.now_ms, group_id, delivery.now_ms - _USE_RESOLUTION_MS),
        )
        row = await _one(cur, "SELECT epoch FROM groups WHERE group_id = %s FOR SHARE", (group_id,))
        if row is None:
            raise NotFoundError("no such group", field="group_id")
        current = int(row[0])
        members = await _members(cur, group_id)
        if delivery.sender not in members:
            raise ForbiddenError("only a current member may send to this group")
        if not current - oldest_epoch <= epoch <= current:
            raise EpochConflictError(
                f"the group is at epoch {current}", field="epoch", epoch=current
            )
        others = tuple(m for m in members if m != delivery.sender)
        return current, await fan_out(cur, group_id, others, delivery)

    @staticmethod
    async def apply_group_update_tx(
        cur: Cursor,
        group_id: bytes,
        update: GroupUpdate,
        *,
        recipients: tuple[bytes, ...],
        delivery: Delivery,
        welcome: tuple[bytes, tuple[bytes, ...]] | None = None,
    ) -> Delivered:
        moved = await _one(
            cur,
            "UPDATE groups SET epoch = %s, group_info = coalesce(%s, group_info), "
            "updated_at_ms = %s, used_at_ms = %s WHERE group_id = %s AND epoch = %s RETURNING 1",
            (
                update.epoch,
                update.group_info,
                delivery.now_ms,
                delivery.now_ms,
                group_id,
                update.from_epoch,
            ),
        )
        if moved is None:
            raise await _conflict(cur, group_id, update.from_epoch)
        await _write_state(cur, group_id, update.state)
        if update.members is not None:
            await _set_members(cur, group_id, update.members)
        if update.commit_hash is not None:
            await cur.execute(
                "INSERT INTO group_commits (group_id, epoch, commit_hash) VALUES (%s, %s, %s)",
                (group_id, update.from_epoch, update.commit_hash),
            )
            # This one and the ACCEPTED_COMMITS_KEPT - 1 before it stay.
            await cur.execute(
                "DELETE FROM group_commits WHERE group_id = %s AND epoch <= %s",
                (group_id, update.from_epoch - ACCEPTED_COMMITS_KEPT),
            )
        delivered = await fan_out(cur, group_id, recipients, delivery)
        if welcome is None:
            return delivered
        message, joiners = welcome
        joined = await fan_out(cur, group_id, joiners, delivery, payload=message)
        return Delivered(
            seqs={**delivered.seqs, **joined.seqs}, gaps=(*delivered.gaps, *joined.gaps)
        )

    @staticmethod
    async def remove_unused_groups_tx(cur: Cursor, used_before_ms: int) -> int:
        # Locked and skipped when busy: a publish racing the removal either
        # holds the row (the group stays this round) or finds it gone.
        await cur.execute(
            "SELECT group_id FROM groups WHERE used_at_ms < %s LIMIT %s FOR UPDATE SKIP LOCKED",
            (used_before_ms, GROUP_BATCH),
        )
        groups = [bytes(row[0]) for row in await cur.fetchall()]
        if not groups:
            return 0
        for table in ("group_state", "group_members", "group_commits", "groups"):
            await cur.execute(
                f"DELETE FROM {table} WHERE group_id = ANY(%s)",  # noqa: S608 - fixed names
                (groups,),
            )
        return len(groups)
