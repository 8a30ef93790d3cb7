"""Sending application messages: encrypt, persist, then publish.

The ratchet advance and an outbox row commit in one transaction before the
message is handed to the server: a crash in between leaves a row that the
next run publishes again (:func:`publish_row`), never a reused key.
"""

from __future__ import annotations

import time

from qpq_client import _plaintext
from qpq_client._session import Session
from qpq_client._state import OutboxKind, OutboxRow, Transaction
from qpq_proto import MessageKind

__all__ = ["publish_row", "send_application", "send_text"]

_KIND_OF_ROW = {
    OutboxKind.APPLICATION: MessageKind.APPLICATION,
    OutboxKind.PROPOSAL: MessageKind.PROPOSAL,
    OutboxKind.COMMIT: MessageKind.COMMIT,
}


async def send_text(session: Session, group_id: bytes, body: str) -> None:
    """Encrypt ``body`` for the group and publish it to every other member.

    Proposals waiting in the group must be committed first (the caller
    settles them): MLS refuses to encrypt while any are pending.
    """
    sent_at = int(time.time() * 1000)
    await send_application(
        session,
        group_id,
        _plaintext.encode_text(body, sent_at),
        session.others(group_id),
        history=(body, sent_at),
    )


async def send_application(
    session: Session,
    group_id: bytes,
    plaintext: bytes,
    recipients: tuple[bytes, ...],
    *,
    history: tuple[str, int] | None = None,
) -> None:
    """Encrypt ``plaintext`` and publish it to ``recipients``; ``history`` is (body, sent_at)."""
    encrypted = session.mls.encrypt(group_id, plaintext)
    epoch = session.mls.epoch(group_id)

    def write(tx: Transaction) -> int:
        # Persisted before sending: a resent ratchet generation would reuse a key.
        tx.apply_changes(encrypted.changes)
        if history is not None:
            tx.add_history(
                group_id, "text", history[0], sender=session.me, sent_at=history[1], shown=True
            )
        return tx.add_outbox(OutboxKind.APPLICATION, group_id, epoch, encrypted.message, recipients)

    outbox_id = session.persist(write)
    if recipients:
        await session.conn.publish(
            group_id, epoch, MessageKind.APPLICATION, encrypted.message, recipients
        )
    session.persist(lambda tx: tx.delete_outbox(outbox_id))


async def publish_row(session: Session, row: OutboxRow) -> None:
    """Publish an application message or proposal a previous run persisted, then drop it."""
    if row.recipients:
        await session.conn.publish(
            row.group_id, row.epoch, _KIND_OF_ROW[row.kind], row.payload, row.recipients
        )
    session.persist(lambda tx: tx.delete_outbox(row.id))
