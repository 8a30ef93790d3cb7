"""Sending application messages: encrypt, persist, then publish.

The ratchet advance and an outbox row commit in one transaction before the
message is handed to the server: a crash in between leaves a row that the
next run publishes again (:func:`publish_row`), never a reused key. The
server fans the message out to the group's verified roster. With direct
delivery on (:mod:`qpq_p2p`), the same bytes go to each member directly
first, and through the server as well as soon as one member is not reached
or does not acknowledge; a member that gets both copies shows it once.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from qpq_client import _outbox, _plaintext
from qpq_client._errors import MessageTooLongError
from qpq_client._rows import OutboxKind, OutboxRow
from qpq_client._session import Session
from qpq_client._state import Transaction
from qpq_proto import MessageKind
from qpq_proto.errors import EpochConflictError, ServiceError

__all__ = [
    "FRAMING_BYTES",
    "Staged",
    "check_size",
    "deliver",
    "drop_refused",
    "publish_row",
    "restage",
    "send_application",
    "send_text",
    "stage_text",
    "unstage",
]

_log = logging.getLogger("qpq_client")

#: What MLS adds around a plaintext in a PrivateMessage, generously: about
#: 150 bytes measured with a 16-byte group id (header, sender data, AEAD
#: tag, signature), up to 240 more with the longest group id.
FRAMING_BYTES = 1024

#: A message the server refuses like this is dropped from the outbox, not sent again.
_DROPPED: tuple[type[ServiceError], ...] = (EpochConflictError, *_outbox.REFUSED_FOR_GOOD)

_KIND_OF_ROW = {
    OutboxKind.APPLICATION: MessageKind.APPLICATION,
    OutboxKind.PROPOSAL: MessageKind.PROPOSAL,
}


@dataclass(frozen=True, slots=True)
class Staged:
    """An application message encrypted and persisted with its outbox row, not yet sent."""

    outbox_id: int
    group_id: bytes
    epoch: int
    message: bytes = field(repr=False)
    #: False when we are alone in the group: nobody to send it to.
    has_recipients: bool
    #: What was encrypted, to encrypt again for a newer epoch (:func:`restage`).
    plaintext: bytes = field(repr=False)
    #: Its line in our history (None for a message history does not show).
    history_id: int | None = None


async def send_text(session: Session, group_id: bytes, body: str) -> None:
    """Encrypt ``body`` for the group and send it to every other member."""
    staged = stage_text(session, group_id, body)
    await deliver(session, staged)
    session.persist(lambda tx: tx.delete_outbox(staged.outbox_id))


def stage_text(session: Session, group_id: bytes, body: str, *, durable: bool = True) -> Staged:
    """Encrypt ``body`` and persist it for sending (history and outbox row).

    Proposals waiting in the group must be committed first (the caller
    settles them): MLS refuses to encrypt while any are pending.
    ``durable=False`` commits without waiting for the disk: the caller
    must then :meth:`StateStore.sync_to_disk` before it sends anything of it.
    """
    sent_at = int(time.time() * 1000)
    plaintext = _plaintext.encode_text(body, sent_at, secrets.token_hex(16))
    check_size(session, plaintext)
    return _stage(session, group_id, plaintext, history=(body, sent_at), durable=durable)


def check_size(session: Session, plaintext: bytes) -> None:
    """Refuse, before anything is encrypted or kept, a plaintext whose message
    the server would refuse for good (its announced ``max_payload_bytes``).

    Raises:
        MessageTooLongError: one line saying the limit.
    """
    limit = session.conn.limits.max_payload_bytes - FRAMING_BYTES
    if len(plaintext) > limit:
        raise MessageTooLongError(
            f"the message is too long: {len(plaintext):,} bytes as sent, and this server takes"
            f" at most {limit:,} (nothing was sent)"
        )


async def send_application(session: Session, group_id: bytes, plaintext: bytes) -> None:
    """Encrypt ``plaintext`` (not shown in our history) and send it to the group."""
    staged = _stage(session, group_id, plaintext, history=None)
    await deliver(session, staged)
    session.persist(lambda tx: tx.delete_outbox(staged.outbox_id))


def _stage(
    session: Session,
    group_id: bytes,
    plaintext: bytes,
    *,
    history: tuple[str, int] | None,
    durable: bool = True,
) -> Staged:
    encrypted = session.mls.encrypt(group_id, plaintext)
    epoch = session.mls.epoch(group_id)

    def write(tx: Transaction) -> tuple[int, int | None]:
        # Persisted before sending: a resent ratchet generation would reuse a key.
        tx.apply_changes(encrypted.changes)
        line = None
        if history is not None:
            line = tx.add_history(
                group_id, "text", history[0], sender=session.me, sent_at=history[1], shown=True
            )
        return tx.add_outbox(OutboxKind.APPLICATION, group_id, epoch, encrypted.message), line

    outbox_id, history_id = session.persist(write, durable=durable)
    return Staged(
        outbox_id,
        group_id,
        epoch,
        encrypted.message,
        bool(session.others(group_id)),
        plaintext,
        history_id,
    )


def restage(session: Session, staged: Staged) -> Staged:
    """Encrypt a staged message again, at the group's epoch now, in place of its outbox row.

    For a message the server refused as too old an epoch, once we caught
    up: the old ciphertext is dropped unsent, its history line stays.
    """
    encrypted = session.mls.encrypt(staged.group_id, staged.plaintext)
    epoch = session.mls.epoch(staged.group_id)

    def write(tx: Transaction) -> int:
        tx.apply_changes(encrypted.changes)
        tx.delete_outbox(staged.outbox_id)
        return tx.add_outbox(OutboxKind.APPLICATION, staged.group_id, epoch, encrypted.message)

    outbox_id = session.persist(write)
    return Staged(
        outbox_id,
        staged.group_id,
        epoch,
        encrypted.message,
        bool(session.others(staged.group_id)),
        staged.plaintext,
        staged.history_id,
    )


def unstage(tx: Transaction, staged: Staged) -> None:
    """Drop a staged message that can no longer be sent: its outbox row and history line."""
    tx.delete_outbox(staged.outbox_id)
    if staged.history_id is not None:
        tx.delete_history_row(staged.history_id)


async def deliver(
    session: Session,
    staged: Staged,
    *,
    before_server: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Send a staged message: directly where members can be reached, else (or also)
    through the server. The caller drops the outbox row once this returns.

    ``before_server`` runs before the server copy is published: the caller
    hands over what waits in the outbox from before this message there, so
    that it does not overtake it (say, messages sent while the server was away).
    """
    if not staged.has_recipients:
        return

    async def via_server() -> None:
        if before_server is not None:
            await before_server()
        published = await session.conn.publish(
            staged.group_id, staged.epoch, MessageKind.APPLICATION, staged.message
        )
        session.published(staged.group_id, staged.epoch, published.epoch)

    if session.peers is None:
        await via_server()
    else:
        await session.peers.send(staged.message, via_server=via_server)


async def publish_row(session: Session, row: OutboxRow) -> None:
    """Publish an application message or proposal a previous run persisted, then drop it.

    One the server refuses for good (the group moved on too many epochs, we
    are no longer a member) is dropped with a note in the group's history; a
    leave proposal refused that way is proposed again once we caught up.
    """
    try:
        await session.conn.publish(row.group_id, row.epoch, _KIND_OF_ROW[row.kind], row.payload)
    except _DROPPED as refused:
        _log.warning("the server refused an unsent message (%s)", type(refused).__name__)
        reason = (
            "the group changed meanwhile"
            if isinstance(refused, EpochConflictError)
            else f"the server said: {refused}"
        )
        drop_refused(session, row.id, row.group_id, reason, kind=row.kind)
        return
    session.persist(lambda tx: tx.delete_outbox(row.id))


def drop_refused(
    session: Session,
    outbox_id: int,
    group_id: bytes,
    reason: str,
    *,
    kind: OutboxKind = OutboxKind.APPLICATION,
) -> None:
    """Drop an outbox row the server refused for good; a message's gets a history event."""

    def drop(tx: Transaction) -> None:
        tx.delete_outbox(outbox_id)
        if kind is OutboxKind.APPLICATION:
            line = _outbox.unsent_line(session.store, group_id, reason)
            tx.add_history(group_id, "event", line, sender=session.me)

    session.persist(drop)
