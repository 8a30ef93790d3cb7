"""Sending application messages: encrypt, persist, then publish.

The ratchet advance and an outbox row commit in one transaction before the
message is handed to the server: a crash in between leaves a row that the
next run publishes again (:func:`publish_row`), never a reused key. The
server fans the message out to the group's verified roster.
"""

from __future__ import annotations

import logging
import time

from qpq_client import _plaintext
from qpq_client._rows import OutboxKind, OutboxRow
from qpq_client._session import Session
from qpq_client._state import Transaction
from qpq_proto import MessageKind
from qpq_proto.errors import EpochConflictError, ForbiddenError, NotFoundError

__all__ = ["publish_row", "send_application", "send_text"]

_log = logging.getLogger("qpq_client")

_KIND_OF_ROW = {
    OutboxKind.APPLICATION: MessageKind.APPLICATION,
    OutboxKind.PROPOSAL: MessageKind.PROPOSAL,
}


async def send_text(session: Session, group_id: bytes, body: str) -> None:
    """Encrypt ``body`` for the group and publish it to every other member.

    Proposals waiting in the group must be committed first (the caller
    settles them): MLS refuses to encrypt while any are pending.
    """
    sent_at = int(time.time() * 1000)
    await send_application(
        session, group_id, _plaintext.encode_text(body, sent_at), history=(body, sent_at)
    )


async def send_application(
    session: Session,
    group_id: bytes,
    plaintext: bytes,
    *,
    history: tuple[str, int] | None = None,
) -> None:
    """Encrypt ``plaintext`` for the group and publish it; ``history`` is (body, sent_at)."""
    encrypted = session.mls.encrypt(group_id, plaintext)
    epoch = session.mls.epoch(group_id)

    def write(tx: Transaction) -> int:
        # Persisted before sending: a resent ratchet generation would reuse a key.
        tx.apply_changes(encrypted.changes)
        if history is not None:
            tx.add_history(
                group_id, "text", history[0], sender=session.me, sent_at=history[1], shown=True
            )
        return tx.add_outbox(OutboxKind.APPLICATION, group_id, epoch, encrypted.message)

    outbox_id = session.persist(write)
    if session.others(group_id):
        await session.conn.publish(group_id, epoch, MessageKind.APPLICATION, encrypted.message)
    session.persist(lambda tx: tx.delete_outbox(outbox_id))


async def publish_row(session: Session, row: OutboxRow) -> None:
    """Publish an application message or proposal a previous run persisted, then drop it.

    One the server refuses for good (the group moved on too many epochs, we
    are no longer a member) is dropped with a note in the group's history; a
    leave proposal refused that way is proposed again once we caught up.
    """
    try:
        await session.conn.publish(row.group_id, row.epoch, _KIND_OF_ROW[row.kind], row.payload)
    except (EpochConflictError, ForbiddenError, NotFoundError) as refused:
        _log.warning("the server refused an unsent message (%s)", type(refused).__name__)

        def drop(tx: Transaction) -> None:
            tx.delete_outbox(row.id)
            if row.kind is OutboxKind.APPLICATION:
                tx.add_history(row.group_id, "event", _UNSENT, sender=session.me)

        session.persist(drop)
        return
    session.persist(lambda tx: tx.delete_outbox(row.id))


_UNSENT = "a message you wrote while offline could not be sent (the group changed meanwhile)"
