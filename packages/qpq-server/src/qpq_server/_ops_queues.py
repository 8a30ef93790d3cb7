"""Recipients' queues: a fan-out, fetch and ack, written once for both engines.

Each recipient's queue is one row (its last seq and depth). A fan-out:

- takes its recipients' queue rows in one order (on PostgreSQL creating
  missing ones first, in that order), so two fan-outs cannot deadlock on
  them, and reads each queue's depth, and the sender's share of it, under
  that lock: the depth and share caps hold exactly under concurrent
  senders (on SQLite the write transaction holds the whole file);
- gives each recipient without room one gap notice for the group instead
  (none while an earlier one is unacknowledged), so one full queue never
  blocks a group;
- stores the payload once, however many recipients it reaches, charged to
  the sender's quota by one conditional upsert of its counter row (the
  check and the charge in one statement);
- takes each seq from the locked queue row, ``max(last seq + 1, now in
  microseconds)``, so one recipient's seqs commit in seq order with any
  number of writers, and a row removed while idle starts again above all
  it handed out;
- on PostgreSQL announces each recipient with ``pg_notify`` in the same
  transaction: every node's listener hears it if and when it commits.
"""

from __future__ import annotations

from qpq_proto import NO_SENDER, Envelope
from qpq_server._engine import Txn
from qpq_server._errors import StorageError
from qpq_server._rows import envelopes, fetched_bytes, queued_bytes_exceeded
from qpq_server._storage import Delivered, Delivery, Queued, QueueStats, seq_floor

__all__ = [
    "DELIVERY_CHANNEL",
    "ack",
    "fan_out",
    "fetch",
    "lock_queues",
    "queue_for",
    "queue_stats",
]

#: The notification channel of stored deliveries; the payload is the recipient in hex.
DELIVERY_CHANNEL = "qpq_deliveries"


def fan_out(
    txn: Txn,
    group_id: bytes,
    recipients: tuple[bytes, ...],
    delivery: Delivery,
    payload: bytes | None = None,
    *,
    group_info_digest: bytes | None = None,
) -> Delivered:
    """Queue ``payload`` (default the delivery's) for each recipient with room, a gap
    notice for the others. QuotaExceededError when the sender is over its quota.

    The payload row names ``group_id`` (the group the message is delivered
    for; for a Welcome, the group whose commit added the recipient) and, for
    a commit, ``group_info_digest``: what the recipient's envelope carries.
    """
    content = delivery.payload if payload is None else payload
    targets = list(dict.fromkeys(recipients))  # each once, in the roster's order
    depths, shares = _lock_queues(txn, targets, delivery.sender)
    room = [
        recipient
        for recipient in targets
        if depths[recipient] < delivery.depth_cap and shares.get(recipient, 0) < delivery.share_cap
    ]
    full = set(targets).difference(room)
    gaps = tuple(r for r in targets if r in full and _gap_notice(txn, r, group_id, delivery))
    if not room:
        return Delivered(seqs={}, gaps=gaps)
    _charge(txn, delivery, len(content))
    payload_id = txn.value(
        "INSERT INTO payloads (sender, payload, enqueued_at_ms, group_id, group_info_digest, "
        "account) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (delivery.sender, content, delivery.now_ms, group_id, group_info_digest, delivery.account),
    )
    seqs = _enqueue(txn, room, delivery.sender, int(payload_id), delivery)
    queued = Queued(delivery.sender, content, delivery.now_ms, group_id, group_info_digest)
    return Delivered(seqs=seqs, gaps=gaps, queued=queued)


def _lock_queues(
    txn: Txn, recipients: list[bytes], sender: bytes
) -> tuple[dict[bytes, int], dict[bytes, int]]:
    """Each recipient's queue depth and ``sender``'s share of it, the rows locked."""
    depths: dict[bytes, int] = {}
    shares: dict[bytes, int] = {}
    missing = sorted(recipients)
    while missing:
        # PostgreSQL: missing rows are created first, in order, then all are
        # locked in order. A row created here (depth 0) is used by this
        # fan-out or rolled back with it; one the cleanup removes between this
        # INSERT and the lock is missed by the lock, and inserted again.
        if txn.engine.arrays:
            txn.execute(
                "INSERT INTO queues (recipient, last_seq, depth) "
                "SELECT r, 0, 0 FROM unnest(?::bytea[]) AS r ORDER BY r "
                "ON CONFLICT (recipient) DO NOTHING",
                (missing,),
            )
        for where, keys in txn.in_list("q.recipient", missing):
            for recipient, depth, share in txn.all(
                "SELECT q.recipient, q.depth, s.depth FROM queues AS q "  # noqa: S608 - placeholders
                "LEFT JOIN queue_shares AS s ON s.recipient = q.recipient AND s.sender = ? "
                f"WHERE {where} ORDER BY q.recipient FOR UPDATE OF q",
                (sender, *keys),
            ):
                depths[bytes(recipient)] = int(depth)
                if share is not None:
                    shares[bytes(recipient)] = int(share)
        missing = [r for r in missing if r not in depths]
        if missing and not txn.engine.arrays:
            # SQLite: the write transaction holds the file; create what the read missed.
            txn.executemany(
                "INSERT INTO queues (recipient, last_seq, depth) VALUES (?, 0, 0)",
                [(r,) for r in missing],
            )
    return depths, shares


def _enqueue(
    txn: Txn, recipients: list[bytes], sender: bytes, payload_id: int, delivery: Delivery
) -> dict[bytes, int]:
    """Queue ``payload_id`` for ``recipients`` (distinct, rows locked): their seqs."""
    floor = max(1, seq_floor(delivery.now_ms))
    if txn.engine.arrays:
        # One statement whatever the number of recipients, each announced on COMMIT.
        rows = txn.all(
            "WITH q AS (UPDATE queues SET last_seq = greatest(last_seq + 1, ?), "
            "depth = depth + 1 WHERE recipient = ANY(?) RETURNING recipient, last_seq), "
            "d AS (INSERT INTO deliveries (recipient, seq, payload_id, expires_at_ms, sender) "
            "SELECT recipient, last_seq, ?, ?, ? FROM q), "
            "s AS (INSERT INTO queue_shares (recipient, sender, depth) SELECT recipient, ?, 1 "
            "FROM q ON CONFLICT (recipient, sender) DO UPDATE SET depth = queue_shares.depth + 1) "
            "SELECT recipient, last_seq, pg_notify(?, encode(recipient, 'hex')) FROM q",
            (floor, recipients, payload_id, delivery.expires_ms, sender, sender, DELIVERY_CHANNEL),
        )
    else:
        # SQLite has no data-modifying WITH: the same three writes, one by one.
        rows = []
        for where, keys in txn.in_list("recipient", recipients):
            rows += txn.all(
                "UPDATE queues SET last_seq = greatest(last_seq + 1, ?), "  # noqa: S608 - placeholders
                f"depth = depth + 1 WHERE {where} RETURNING recipient, last_seq",
                (floor, *keys),
            )
        txn.executemany(
            "INSERT INTO deliveries (recipient, seq, payload_id, expires_at_ms, sender) "
            "VALUES (?, ?, ?, ?, ?)",
            [(r, seq, payload_id, delivery.expires_ms, sender) for r, seq in rows],
        )
        txn.executemany(
            "INSERT INTO queue_shares (recipient, sender, depth) VALUES (?, ?, 1) "
            "ON CONFLICT (recipient, sender) DO UPDATE SET depth = queue_shares.depth + 1",
            [(r, sender) for r in recipients],
        )
    seqs = {bytes(row[0]): int(row[1]) for row in rows}
    if len(seqs) != len(recipients):  # every row was locked above: it exists
        raise StorageError("a queue row vanished while locked")
    return {recipient: seqs[recipient] for recipient in recipients}


def lock_queues(
    txn: Txn, recipients: list[bytes], sender: bytes
) -> tuple[dict[bytes, int], dict[bytes, int]]:
    """Lock the recipients' queue rows as a fan-out does (creating missing ones):
    each one's depth, and ``sender``'s share of it, for a writer of its own
    (a deletion notice)."""
    return _lock_queues(txn, recipients, sender)


def queue_for(
    txn: Txn, recipients: list[bytes], sender: bytes, payload_id: int, delivery: Delivery
) -> dict[bytes, int]:
    """Queue a stored payload row for recipients whose rows :func:`lock_queues` locked."""
    return _enqueue(txn, recipients, sender, payload_id, delivery)


def _gap_notice(txn: Txn, recipient: bytes, group_id: bytes, delivery: Delivery) -> bool:
    """Queue a gap notice for ``group_id`` unless one is still unacknowledged."""
    if txn.one("SELECT 1 FROM gaps WHERE recipient = ? AND group_id = ?", (recipient, group_id)):
        return False
    # A gap notice's payload row holds the group id it is about.
    payload_id = txn.value(
        "INSERT INTO payloads (sender, payload, enqueued_at_ms, gap) VALUES (?, ?, ?, 1) "
        "RETURNING id",
        (NO_SENDER, group_id, delivery.now_ms),
    )
    (seq,) = _enqueue(txn, [recipient], NO_SENDER, int(payload_id), delivery).values()
    txn.execute(
        "INSERT INTO gaps (recipient, group_id, seq) VALUES (?, ?, ?)", (recipient, group_id, seq)
    )
    return True


def _charge(txn: Txn, delivery: Delivery, size: int) -> None:
    """Count ``size`` more bytes queued by the sender's account, or refuse if over its quota."""
    # The row is keyed by the account (``queued_bytes.sender`` is its key);
    # the payload row names it, so that its removal gives the bytes back.
    if size <= delivery.quota_bytes and txn.one(
        "INSERT INTO queued_bytes (sender, bytes) VALUES (?, ?) "
        "ON CONFLICT (sender) DO UPDATE SET bytes = queued_bytes.bytes + excluded.bytes "
        "WHERE queued_bytes.bytes + excluded.bytes <= ? RETURNING bytes",
        (delivery.quota_key, size, delivery.quota_bytes),
    ):
        return
    raise queued_bytes_exceeded(delivery.quota_bytes)


def fetch(
    txn: Txn, recipient: bytes, *, after_seq: int, limit: int, max_bytes: int, now_ms: int
) -> list[Envelope]:
    # Rows are read only as far as ``max_bytes`` reaches.
    cursor = txn.execute(
        "SELECT d.seq, p.sender, p.payload, p.enqueued_at_ms, p.gap, p.group_id, "
        "p.group_info_digest "
        "FROM deliveries AS d JOIN payloads AS p ON p.id = d.payload_id "
        "WHERE d.recipient = ? AND d.seq > ? AND d.expires_at_ms > ? ORDER BY d.seq LIMIT ?",
        (recipient, after_seq, now_ms, limit),
    )
    return envelopes(cursor, max_bytes)


def fetch_size(
    txn: Txn, recipient: bytes, *, after_seq: int, limit: int, max_bytes: int, now_ms: int
) -> int:
    """The payload bytes :func:`fetch` with the same arguments returns now, its
    envelopes' framing included, read from the payloads' lengths alone."""
    lengths = txn.execute(
        "SELECT length(p.payload) "
        "FROM deliveries AS d JOIN payloads AS p ON p.id = d.payload_id "
        "WHERE d.recipient = ? AND d.seq > ? AND d.expires_at_ms > ? ORDER BY d.seq LIMIT ?",
        (recipient, after_seq, now_ms, limit),
    )
    return fetched_bytes((length for (length,) in lengths), max_bytes)


def ack(txn: Txn, recipient: bytes, up_to_seq: int) -> int:
    # The queue row first, as every writer of this queue locks it.
    txn.lock_rows("SELECT 1 FROM queues WHERE recipient = ?", (recipient,))
    removed = txn.changed(
        "DELETE FROM deliveries WHERE recipient = ? AND seq <= ?", (recipient, up_to_seq)
    )
    if removed:
        txn.execute(
            "UPDATE queues SET depth = greatest(0, depth - ?) WHERE recipient = ?",
            (removed, recipient),
        )
    return removed


def queue_stats(txn: Txn) -> QueueStats:
    queues, messages, max_depth = txn.one(
        "SELECT count(*), coalesce(sum(depth), 0), coalesce(max(depth), 0) FROM queues "
        "WHERE depth > 0"
    ) or (0, 0, 0)
    return QueueStats(queues=int(queues), messages=int(messages), max_depth=int(max_depth))
