"""Receiving: fetch, process, persist, and only then acknowledge.

Each envelope is processed once: its MLS change set, the history rows it
produces and the processed-seq marker commit in one transaction, and the
server's ack for a batch goes out only after every envelope of it is
persisted. An envelope at or below the processed seq (redelivered after a
crash between commit and ack) is skipped, so it is shown once.

Our own pending commit is settled here too: a commit for its epoch from
someone else means ours lost (clear it); anything for a later epoch means
ours was accepted (merge it), since the delivery service accepts exactly one
commit per epoch and a member's queue preserves order.

Application messages from a sender who is not a member at our current epoch
(removed, yet still holding keys of an epoch MLS keeps for late messages)
are dropped: acknowledged like any other, logged without content, never shown.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from qpq_client import _plaintext
from qpq_client._keys import ensure_key_packages
from qpq_client._session import Session
from qpq_client._state import (
    GroupRow,
    GroupState,
    OutboxKind,
    OutboxRow,
    OutboxState,
    StateStore,
    Transaction,
)
from qpq_core import (
    ApplicationMessage,
    CommitApplied,
    MessageInfo,
    MessageKind,
    MlsError,
    ProposalStored,
    peek_message,
)
from qpq_proto import Envelope
from qpq_proto.errors import UnsupportedCiphersuiteError

__all__ = ["merge_own_commit", "pending_commit", "process_envelopes", "sync", "unique_name"]

_log = logging.getLogger("qpq_client")
FETCH_LIMIT = 100


def unique_name(store: StateStore, base: str, *, own: bytes | None = None) -> str:
    """``base``, or ``base-2``, ``base-3``... whichever no other group uses."""
    taken = {g.name for g in store.groups() if g.group_id != own}
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def pending_commit(store: StateStore, group_id: bytes) -> OutboxRow | None:
    """Our commit for ``group_id`` that the server has not confirmed, if any."""
    return next(
        (
            r
            for r in store.outbox()
            if r.kind is OutboxKind.COMMIT
            and r.state is OutboxState.PENDING
            and r.group_id == group_id
        ),
        None,
    )


async def sync(session: Session, *, wait_ms: int = 0) -> int:
    """Process everything queued for us; with ``wait_ms``, wait that long for a first message.

    Returns the number of envelopes received.
    """
    total = 0
    while True:
        if total == 0 and wait_ms > 0:
            envelopes = await session.conn.fetch_wait(FETCH_LIMIT, wait_ms)
        else:
            envelopes = await session.conn.fetch(FETCH_LIMIT)
        if not envelopes:
            return total
        await process_envelopes(session, envelopes)
        total += len(envelopes)


async def process_envelopes(session: Session, envelopes: Iterable[Envelope]) -> None:
    """Process and persist each envelope in order, then acknowledge them."""
    last = 0
    for envelope in envelopes:
        await _process(session, envelope)
        last = max(last, envelope.seq)
    if last:
        await session.conn.ack(last)


async def _process(session: Session, envelope: Envelope) -> None:
    store = session.store
    if envelope.seq <= store.processed_seq():
        return  # redelivered: already processed and persisted

    def mark(tx: Transaction) -> None:
        tx.set_processed_seq(envelope.seq)

    try:
        info = peek_message(envelope.payload)
    except MlsError:
        _log.warning("dropping an undecodable message (seq %d)", envelope.seq)
        session.persist(mark)
        return
    if info.kind is MessageKind.WELCOME:
        await _welcome(session, envelope)
        return
    group = store.group_by_id(info.group_id) if info.group_id else None
    if group is None or group.state in (GroupState.LEFT, GroupState.REMOVED):
        session.persist(mark)
        return
    await _settle_own_commit(session, group, info, envelope.sender)
    try:
        result = session.mls.process(envelope.payload)
    except MlsError as error:
        _log.warning("cannot process a message for %s (%s)", group.name, type(error).__name__)
        session.persist(mark)
        return
    if isinstance(result, ApplicationMessage):
        await _application(session, group, envelope, result)
    elif isinstance(result, CommitApplied):
        leaving = group.state is GroupState.LEAVING
        lines = await commit_lines(session, envelope.sender, result, leaving=leaving)
        state: GroupState = group.state
        if result.self_removed:
            state = GroupState.LEFT if group.state is GroupState.LEAVING else GroupState.REMOVED

        def write(tx: Transaction) -> None:
            tx.apply_changes(result.changes)
            for line in lines:
                tx.add_history(group.group_id, "event", line, sender=envelope.sender)
            if state is not group.state:
                tx.set_group_state(group.group_id, state)
            mark(tx)

        session.persist(write)
    elif isinstance(result, ProposalStored):

        def write_proposal(tx: Transaction) -> None:
            tx.apply_changes(result.changes)
            mark(tx)

        session.persist(write_proposal)
        session.leavers.setdefault(group.group_id, set()).add(result.sender)
    else:  # OwnMessage

        def write_own(tx: Transaction) -> None:
            tx.apply_changes(result.changes)
            mark(tx)

        session.persist(write_own)


async def _welcome(session: Session, envelope: Envelope) -> None:
    store = session.store
    try:
        joined = session.mls.join_from_welcome(envelope.payload)
    except (MlsError, UnsupportedCiphersuiteError) as error:  # a Welcome for another suite
        _log.warning("cannot join from a Welcome (%s)", type(error).__name__)
        session.persist(lambda tx: tx.set_processed_seq(envelope.seq))
        return
    inviter = await session.name_of(envelope.sender)
    for member in joined.members:
        await session.name_of(member)
    existing = store.group_by_id(joined.group_id)
    name = unique_name(store, f"group-{joined.group_id.hex()[:8]}")

    def write(tx: Transaction) -> None:
        tx.apply_changes(joined.changes)
        if existing is None:
            tx.add_group(joined.group_id, name, named=False)
        else:
            tx.set_group_state(joined.group_id, GroupState.ACTIVE)
        tx.add_history(
            joined.group_id, "event", f"you joined (invited by {inviter})", sender=envelope.sender
        )
        tx.set_processed_seq(envelope.seq)

    session.persist(write)
    # The Welcome consumed one of our KeyPackages.
    await ensure_key_packages(session)


async def _application(
    session: Session, group: GroupRow, envelope: Envelope, message: ApplicationMessage
) -> None:
    if message.sender not in session.mls.members(group.group_id):
        _drop_from_former_member(session, group, envelope, message)
        return
    content = _plaintext.decode(message.plaintext)
    sender = await session.name_of(message.sender)

    def write(tx: Transaction) -> None:
        tx.apply_changes(message.changes)
        if isinstance(content, _plaintext.Text):
            tx.add_history(
                group.group_id,
                "text",
                content.body,
                sender=message.sender,
                sent_at=content.sent_at or envelope.enqueued_at_ms,
                seq=envelope.seq,
            )
        elif isinstance(content, _plaintext.GroupMeta):
            if not group.named:
                tx.rename_group(
                    group.group_id,
                    unique_name(session.store, content.name, own=group.group_id),
                )
        else:
            tx.add_history(
                group.group_id,
                "event",
                f"{sender} sent a message this client cannot show ({content.reason})",
                sender=message.sender,
                seq=envelope.seq,
            )
        tx.set_processed_seq(envelope.seq)

    session.persist(write)


def _drop_from_former_member(
    session: Session, group: GroupRow, envelope: Envelope, message: ApplicationMessage
) -> None:
    # OpenMLS still decrypts messages framed for one of the last
    # MAX_PAST_EPOCHS epochs, so a removed member can keep "talking" into the
    # group with its old keys. The server ordered the removal before this
    # message, so it was sent by someone who is no longer in the group: drop
    # it, but persist the spent ratchet key and the seq so the queue moves on.
    _log.warning(
        "dropped a message in %s from %s, who is no longer a member (sent in epoch %d)",
        group.name,
        session.display_name(message.sender),
        message.epoch,
    )

    def write(tx: Transaction) -> None:
        tx.apply_changes(message.changes)
        tx.set_processed_seq(envelope.seq)

    session.persist(write)


async def _settle_own_commit(
    session: Session, group: GroupRow, info: MessageInfo, sender: bytes
) -> None:
    row = pending_commit(session.store, group.group_id)
    if row is None or info.epoch is None:
        return
    if info.epoch > row.epoch:
        await merge_own_commit(session, row)  # a later epoch exists: ours was the accepted one
    elif info.epoch == row.epoch and info.kind is MessageKind.COMMIT and sender != session.me:
        cleared = session.mls.clear_pending_commit(group.group_id)

        def write(tx: Transaction) -> None:
            tx.apply_changes(cleared.changes)
            tx.set_outbox_state(row.id, OutboxState.LOST)

        session.persist(write)


async def merge_own_commit(session: Session, row: OutboxRow) -> CommitApplied:
    """Merge our accepted commit; the outbox row then holds any Welcome to deliver."""
    applied = session.mls.merge_pending_commit(row.group_id)
    lines = await commit_lines(session, session.me, applied)
    # What the user asked for they already saw; a leave we completed for
    # someone else is news.
    leavers = session.leavers.get(row.group_id, set())
    shown = not any(k in leavers for k in applied.removed)

    def write(tx: Transaction) -> None:
        tx.apply_changes(applied.changes)
        for line in lines:
            tx.add_history(row.group_id, "event", line, sender=session.me, shown=shown)
        if row.welcome is None:
            tx.delete_outbox(row.id)
        else:
            tx.set_outbox_state(row.id, OutboxState.MERGED)

    session.persist(write)
    return applied


async def commit_lines(
    session: Session, committer: bytes, applied: CommitApplied, *, leaving: bool = False
) -> list[str]:
    """What a person should read about a commit."""
    who = "you" if committer == session.me else await session.name_of(committer)
    lines = [f"{who} added {await session.name_of(k)}" for k in applied.added]
    for key in applied.removed:
        if key == session.me:
            lines.append("you left" if leaving or who == "you" else f"you were removed by {who}")
        elif key == committer or key in session.leavers.get(applied.group_id, ()):
            lines.append(f"{await session.name_of(key)} left")
        else:
            lines.append(f"{who} removed {await session.name_of(key)}")
    return lines
