"""Receiving: fetch, process, persist, and only then acknowledge.

One rule for every envelope: it ends with its seq persisted and, with its
batch, acknowledged, whatever it holds. What MLS authenticates and what we
can read becomes history; anything else (a message MLS refuses, a plaintext
we cannot read, a number out of range, a failure nobody foresaw) becomes an
event without content ("a message from bob could not be read"), after
the MLS state is reloaded from the store, since the store is the truth
(docs/mls.md, "What the host persists"). Nothing a peer or the server sends
can make the same envelope fail again and again. Only a failure on our side
(the connection lost, the store refusing a write) stops processing, and the
envelope then stays queued for the next run.

Each envelope's MLS change set, its history rows and the processed-seq
marker commit in one transaction; an envelope at or below the processed seq
(redelivered after a crash between commit and ack) is skipped, so it is
shown once.

Application messages from a sender who is not a member at our current epoch
(removed, yet still holding keys of an epoch MLS keeps for late messages)
are dropped: acknowledged like any other, logged without content, never
shown. A gap notice from the server (our queue was full) marks the group
for a rejoin, which :func:`qpq_client._commits.settle` carries out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from qpq_client import _plaintext
from qpq_client._errors import StateError
from qpq_client._keys import ensure_key_packages
from qpq_client._session import Session
from qpq_client._state import GroupRow, GroupState, StateStore, Transaction
from qpq_core import (
    ApplicationMessage,
    CommitApplied,
    MessageKind,
    MlsError,
    ProposalStored,
    WrongEpochError,
    peek_message,
)
from qpq_proto import Envelope
from qpq_proto.errors import ConnectionFailedError, ServiceError

__all__ = ["commit_lines", "process_envelopes", "sync", "unique_name"]

_log = logging.getLogger("qpq_client")
FETCH_LIMIT = 100

#: Failures on our side: the envelope stays queued and is processed next time.
_OURS = (ConnectionFailedError, ServiceError, StateError)


def unique_name(store: StateStore, base: str, *, own: bytes | None = None) -> str:
    """``base``, or ``base-2``, ``base-3``... whichever no other group uses."""
    taken = {g.name for g in store.groups() if g.group_id != own}
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


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
        await _process_one(session, envelope)
        last = max(last, envelope.seq)
    if last:
        await session.conn.ack(last)


async def _process_one(session: Session, envelope: Envelope) -> None:
    if envelope.seq <= session.store.processed_seq():
        return  # redelivered: already processed and persisted
    try:
        await _process(session, envelope)
    except _OURS:
        raise
    except Exception as error:  # noqa: BLE001 - the one rule: nothing a peer sends locks us out
        _unreadable(session, envelope, error)


def _mark(envelope: Envelope) -> Callable[[Transaction], None]:
    def write(tx: Transaction) -> None:
        tx.set_processed_seq(envelope.seq)

    return write


def _unreadable(session: Session, envelope: Envelope, error: Exception) -> None:
    """Show that a message could not be read (never what it held), and move on."""
    # Whatever the MLS client did in memory before failing, the store is the truth.
    session.mls.reload(session.store.mls_rows())
    group = _group_of(session, envelope)
    who = session.display_name(envelope.sender)
    _log.warning(
        "a message from %s could not be read (%s, seq %d)", who, type(error).__name__, envelope.seq
    )

    def write(tx: Transaction) -> None:
        if group is not None:
            tx.add_history(
                group.group_id,
                "event",
                f"a message from {who} could not be read",
                sender=envelope.sender,
            )
        tx.set_processed_seq(envelope.seq)

    session.persist(write)


def _group_of(session: Session, envelope: Envelope) -> GroupRow | None:
    try:
        info = peek_message(envelope.payload)
    except MlsError:
        return None
    return session.store.group_by_id(info.group_id) if info.group_id else None


async def _process(session: Session, envelope: Envelope) -> None:
    store = session.store
    if envelope.is_gap:
        _gap(session, envelope)
        return
    info = peek_message(envelope.payload)
    if info.kind is MessageKind.WELCOME:
        await _welcome(session, envelope)
        return
    group = store.group_by_id(info.group_id) if info.group_id else None
    if group is None or group.state in (GroupState.LEFT, GroupState.REMOVED):
        session.persist(_mark(envelope))  # a group we are not in (any more)
        return
    try:
        result = session.mls.process(envelope.payload)
    except WrongEpochError:
        behind = info.epoch is not None and info.epoch > session.mls.epoch(group.group_id)
        if info.kind is MessageKind.COMMIT and behind:
            # A commit for an epoch we never reached: we missed one. Rejoin.
            _fell_behind(session, envelope, group)
            return
        raise
    if isinstance(result, ApplicationMessage):
        await _application(session, group, envelope, result)
    elif isinstance(result, CommitApplied):
        await _commit(session, group, envelope, result)
    elif isinstance(result, ProposalStored):

        def write_proposal(tx: Transaction) -> None:
            tx.apply_changes(result.changes)
            tx.set_processed_seq(envelope.seq)

        session.persist(write_proposal)
    else:  # OwnMessage

        def write_own(tx: Transaction) -> None:
            tx.apply_changes(result.changes)
            tx.set_processed_seq(envelope.seq)

        session.persist(write_own)


async def _commit(
    session: Session, group: GroupRow, envelope: Envelope, applied: CommitApplied
) -> None:
    leaving = group.state is GroupState.LEAVING
    lines = await commit_lines(session, applied, leaving=leaving)
    state: GroupState = group.state
    if applied.self_removed:
        state = GroupState.LEFT if leaving else GroupState.REMOVED

    def write(tx: Transaction) -> None:
        tx.apply_changes(applied.changes)
        for line in lines:
            tx.add_history(group.group_id, "event", line, sender=applied.committer)
        if state is not group.state:
            tx.set_group_state(group.group_id, state)
        tx.set_processed_seq(envelope.seq)

    session.persist(write)


def _gap(session: Session, envelope: Envelope) -> None:
    group = session.store.group_by_id(envelope.gap_group_id)
    if group is None or group.state not in (GroupState.ACTIVE, GroupState.LEAVING):
        session.persist(_mark(envelope))
        return
    _fell_behind(session, envelope, group)


def _fell_behind(session: Session, envelope: Envelope, group: GroupRow) -> None:
    _log.warning("missed messages in %s; rejoining it", group.name)

    def write(tx: Transaction) -> None:
        if not group.needs_rejoin:
            tx.set_needs_rejoin(group.group_id, True)
            tx.add_history(
                group.group_id,
                "event",
                "some messages could not reach you while your queue was full; rejoining",
                sender=None,
            )
        tx.set_processed_seq(envelope.seq)

    session.persist(write)


async def _welcome(session: Session, envelope: Envelope) -> None:
    store = session.store
    joined = session.mls.join_from_welcome(envelope.payload)
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
            tx.set_needs_rejoin(joined.group_id, False)
        tx.add_history(
            joined.group_id, "event", f"you joined (invited by {inviter})", sender=envelope.sender
        )
        tx.set_processed_seq(envelope.seq)

    session.persist(write)
    # The Welcome consumed one of our KeyPackages: top up (a failure here is
    # not the message's; the next connection refills).
    try:
        await ensure_key_packages(session)
    except _OURS as error:
        _log.warning("could not refill KeyPackages now (%s)", type(error).__name__)


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


async def commit_lines(
    session: Session, applied: CommitApplied, *, leaving: bool = False
) -> list[str]:
    """What a person should read about a commit (all of it authenticated by MLS)."""
    committer = applied.committer
    who = "you" if committer == session.me else await session.name_of(committer)
    if applied.external:
        return [] if committer == session.me else [f"{who} rejoined"]
    lines = [f"{who} added {await session.name_of(k)}" for k in applied.added]
    for key in applied.removed:
        if key == session.me:
            lines.append("you left" if leaving or who == "you" else f"you were removed by {who}")
        elif key == committer or key in applied.left:
            lines.append(f"{await session.name_of(key)} left")
        else:
            lines.append(f"{who} removed {await session.name_of(key)}")
    return lines
