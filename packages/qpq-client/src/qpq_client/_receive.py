"""Receiving: fetch, process, persist, and only then acknowledge.

One rule for every envelope: it ends with its seq persisted and, with its
batch, acknowledged, whatever it holds. What MLS authenticates and what we
can read becomes history; anything else (a message MLS refuses, a plaintext
we cannot read, a failure nobody foresaw) becomes an event without content
("a message from bob could not be read"), after the MLS state is reloaded
from the store, since the store is the truth (docs/mls.md, "What the host
persists"). Nothing a peer sends can make the same envelope fail again and
again. Only a failure on our side (the connection lost, the store refusing
a write, the server dropping an answer we took none of in time) stops
processing, and the envelope then stays queued for the next run.

What the server itself gets wrong is refused before anything is processed:
a batch with a seq or time SQLite cannot store (above 2**63-1), or seqs
that do not increase, fails the call as a protocol violation. A seq at or
below the highest one the server confirmed deleting means it lost its
queue (say, its database was reset): that is reported, the cursor starts
again, and the new messages are processed instead of skipped.

Each envelope's MLS change set, its history rows and the processed-seq
marker commit together, with those of the rest of its batch, in one
transaction (one sync to disk per batch); an envelope at or below the processed seq
(redelivered after a crash between commit and ack) is skipped, so it is
shown once.

Invitations (Welcomes) are joined, held as requests or dropped by
:mod:`qpq_client._invitations`; the messages of a group held as a request
are held with it until the user accepts or declines
(:mod:`qpq_client._requests`). Everything from a blocked identity is
dropped: its Welcomes, and its application messages in any group
(acknowledged, never shown). In a group being declined, everything is
processed and nothing shown.

An application message can also arrive directly from a member
(:mod:`qpq_p2p`, :func:`receive_direct`) and again through the server: the
digest of every one processed is kept in the transaction that keeps its
result, and a copy whose digest is known is skipped before MLS sees it.
Nothing orders a direct message after the commits the server accepted, so
the receiver first catches up with the server and takes it only when it
is current: its sender a member at our (now current) epoch, and the message
of that epoch; anything else goes back to the sender
(``DeliveryDeferredError``), who sends it through the server, which refuses
a removed member. When the server cannot be reached, the message is shown
marked unconfirmed, and the next catch-up (:func:`sync`) confirms it, or
withdraws it with one line if its sender is no longer a member.

Application messages from a sender who is not a member at our current epoch
(removed, yet still holding keys of an epoch MLS keeps for late messages)
are dropped: acknowledged like any other, logged without content, never
shown. A gap notice from the server (our queue was full) marks the group
for a rejoin, which :func:`qpq_client._commits.settle` carries out. A
deletion notice (a member's account was deleted) is shown as such, and
``settle`` commits the removal of that account's leaves.

Members heal themselves (:mod:`qpq_client._healing`; docs/mls.md,
"Healing"). The server verifies a commit's signature, epoch and proposals,
not what only members can check (its membership tag, its encrypted path
secrets), so a member can get a commit accepted that nobody else can
process. A commit the server delivered that our MLS refuses, for our epoch
or a later one, marks the group for a rejoin by external commit, with one
line naming the committer; a commit for an epoch we are past (we rejoined
beyond it) is acknowledged silently, and so is every commit of a group
already waiting for its rejoin. After a commit we processed, the digest of
the GroupInfo the server accepted with it (``Envelope.group_info_digest``)
is compared with our own view of the new epoch; a mismatch (a committer
who signed another ``external_pub``) is noted, with a line naming the
committer, and ``settle`` sends the server our own GroupInfo for that epoch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from qpq_client import _healing, _invitations, _plaintext, _request_bounds
from qpq_client._rows import GroupRow, GroupStatus, HeldRow
from qpq_client._session import OUR_FAILURES, Finish, Session
from qpq_client._state import Transaction
from qpq_core import (
    ApplicationMessage,
    CommitApplied,
    MlsError,
    MlsMessageKind,
    peek_message,
)
from qpq_p2p import DeliveryDeferredError, DirectMessage, message_digest
from qpq_proto import Envelope
from qpq_proto.errors import MalformedMessageError, StreamResetError
from qpq_proto.quic import STREAM_STALLED

__all__ = [
    "check_batch",
    "commit_lines",
    "persist_envelopes",
    "process",
    "process_envelopes",
    "process_held",
    "receive_direct",
    "settle_direct",
    "sync",
]

_log = logging.getLogger("qpq_client")
FETCH_LIMIT = 100
#: The largest integer SQLite stores; the protocol's seq and times are unsigned 64-bit.
MAX_STORED_INT = 2**63 - 1


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
            settle_direct(session)
            return total
        await process_envelopes(session, envelopes)
        total += len(envelopes)


def settle_direct(session: Session) -> None:
    """Confirm or withdraw what arrived directly while the server was unreachable.

    Called once everything the server held for us is processed: a message
    whose sender is still a member of its group is confirmed; one whose
    sender is not (the server had ordered the removal before it, or since)
    is withdrawn, with one line saying so.
    """
    pending = session.store.history(direct="unconfirmed")
    if not pending:
        return
    held = set(session.mls.group_ids())
    verdicts: list[tuple[int, bytes, bytes | None, bool]] = []
    for row in pending:
        members = session.mls.members(row.group_id) if row.group_id in held else ()
        verdicts.append((row.id, row.group_id, row.sender, row.sender in members))

    def write(tx: Transaction) -> None:
        for row_id, group_id, sender, confirmed in verdicts:
            if confirmed:
                tx.set_direct(row_id, None)
                continue
            who = session.display_name(sender)
            _log.warning("withdrew a message from %s that arrived directly", who)
            tx.set_direct(row_id, "withdrawn")
            tx.add_history(
                group_id,
                "event",
                f"a message from {who} that arrived directly while the server was unreachable"
                f" was withdrawn: {who} is no longer a member",
                sender=sender,
            )

    session.persist(write)


async def process_envelopes(session: Session, envelopes: Iterable[Envelope]) -> None:
    """Process each envelope in order, persist the batch in one transaction,
    then acknowledge it with one call.

    Each envelope's result is a savepoint of the batch's transaction, so a
    message that cannot be read still becomes its event without undoing the
    others; a failure on our side undoes the whole batch, which stays queued.

    Raises:
        MalformedMessageError: the server broke the protocol (a number this
            client cannot store, seqs out of order); nothing of the batch
            is processed or acknowledged.
    """
    last = await persist_envelopes(session, envelopes)
    if last is not None:
        await session.conn.ack(last)
        session.acknowledged(last)


async def persist_envelopes(
    session: Session,
    envelopes: Iterable[Envelope],
    *,
    acknowledged: int | None = None,
    durable: bool = True,
) -> int | None:
    """Process each envelope in order and persist the batch in one transaction,
    without acknowledging it: the last seq to acknowledge (None for no envelope).

    ``acknowledged``: a seq the server confirmed deleting up to since the
    last one recorded, written in the same transaction
    (:meth:`Session.acknowledged`). ``durable=False``: committed without
    waiting for the disk (:meth:`StateStore.batch`); acknowledge it only
    after :meth:`StateStore.sync_to_disk`. Raises as :func:`process_envelopes`.
    """
    batch = tuple(envelopes)
    if not batch:
        if acknowledged is not None:
            session.acknowledged(acknowledged)
        return None
    check_batch(batch)
    try:
        with session.store.batch(durable=durable):
            for envelope in batch:
                await _process_one(session, envelope)
            if acknowledged is not None:
                session.acknowledged(acknowledged)
    except BaseException:
        # Nothing of the batch was kept: neither may the MLS state in memory.
        session.mls.reload(session.store.mls_rows())
        raise
    return batch[-1].seq


def check_batch(batch: tuple[Envelope, ...]) -> None:
    """Refuse a batch whose numbers SQLite cannot hold or whose seqs do not increase."""
    previous = 0
    for envelope in batch:
        if max(envelope.seq, envelope.enqueued_at_ms) > MAX_STORED_INT:
            raise MalformedMessageError(
                f"a message with seq {envelope.seq}, enqueued at {envelope.enqueued_at_ms}:"
                " beyond what a client stores (2**63-1)"
            )
        if envelope.seq <= previous:
            raise MalformedMessageError(
                f"seq {envelope.seq} after seq {previous} in one answer (seqs must increase)"
            )
        previous = envelope.seq


async def _process_one(session: Session, envelope: Envelope) -> None:
    store = session.store
    if envelope.seq <= store.acked_seq():
        # The server deleted everything up to acked_seq when we acknowledged
        # it: it delivers such a seq again only if it lost its queue.
        _queue_reset(session, envelope)
    elif envelope.seq <= store.processed_seq():
        return  # redelivered: processed and persisted, not yet acknowledged
    await process(session, envelope, _mark(envelope))


async def process(session: Session, envelope: Envelope, finish: Finish) -> None:
    """Process one envelope; ``finish`` marks it done, in the transaction that keeps its result."""
    try:
        await _process(session, envelope, finish)
    except OUR_FAILURES:
        raise
    except Exception as error:  # the one rule: nothing a peer sends locks us out
        if isinstance(error, StreamResetError) and error.error_code == STREAM_STALLED:
            # The server dropped the answer to a call of ours (a Welcome's
            # GroupInfo check) that we took none of in time: this side was
            # too slow, the message is not at fault. Raised, it stays queued
            # and is processed again (a follower subscribes again).
            raise
        _unreadable(session, envelope, error, finish)


async def process_held(session: Session, row: HeldRow) -> None:
    """Process a message held for a requested group, now that the user decided."""
    # It was acknowledged when it was held; its seq belongs to the numbering
    # of that time, so the cursor stays as it is.
    await process(session, row.envelope, lambda tx: tx.delete_held_row(row.id))


def _mark(envelope: Envelope) -> Finish:
    def write(tx: Transaction) -> None:
        tx.set_processed_seq(envelope.seq)

    return write


def _queue_reset(session: Session, envelope: Envelope) -> None:
    _log.warning(
        "the server delivered seq %d again, which it had deleted: it lost the messages it held"
        " for you; continuing with what it has now",
        envelope.seq,
    )
    groups = [
        g for g in session.store.groups() if g.status in (GroupStatus.ACTIVE, GroupStatus.LEAVING)
    ]

    def write(tx: Transaction) -> None:
        tx.reset_cursor()
        for group in groups:
            tx.add_history(
                group.group_id,
                "event",
                "the server lost the messages it held for you; some may be missing",
                sender=None,
            )

    session.persist(write)


def _shows(group: GroupRow | None) -> bool:
    """Whether what happens in ``group`` goes into its history."""
    return group is not None and group.shows_history


def _unreadable(session: Session, envelope: Envelope, error: Exception, finish: Finish) -> None:
    """Show that a message could not be read (never what it held), and move on."""
    # Whatever the MLS client did in memory before failing, the store is the truth.
    session.mls.reload(session.store.mls_rows())
    group = _group_of(session, envelope)
    who = session.display_name(envelope.sender)
    _log.warning(
        "a message from %s could not be read (%s, seq %d)", who, type(error).__name__, envelope.seq
    )

    def write(tx: Transaction) -> None:
        if group is not None and _shows(group):
            tx.add_history(
                group.group_id,
                "event",
                f"a message from {who} could not be read",
                sender=envelope.sender,
            )
        finish(tx)

    session.persist(write)


def _group_of(session: Session, envelope: Envelope) -> GroupRow | None:
    try:
        info = peek_message(envelope.payload)
    except MlsError:
        return None
    return session.store.group_by_id(info.group_id) if info.group_id else None


async def _process(session: Session, envelope: Envelope, finish: Finish) -> None:
    store = session.store
    if envelope.is_gap:
        _gap(session, envelope, finish)
        return
    if envelope.is_deletion:
        _account_deleted(session, envelope, finish)
        return
    info = peek_message(envelope.payload)
    if info.kind is MlsMessageKind.WELCOME:
        await _invitations.welcome(session, envelope, finish)
        return
    group = store.group_by_id(info.group_id) if info.group_id else None
    if group is None or group.status in (GroupStatus.LEFT, GroupStatus.REMOVED):
        session.persist(finish)  # a group we are not in (any more)
        return
    if group.status is GroupStatus.REQUESTED:
        _hold(session, group, envelope, finish)
        return
    if info.kind is MlsMessageKind.APPLICATION:
        digest = message_digest(envelope.payload)
        if store.seen(digest):
            session.persist(finish)  # it came directly from its sender first
            return
        finish = _and_seen(finish, digest, envelope.seq)
    if info.kind is MlsMessageKind.COMMIT:
        _healing.drop_lost_commit(session, group, info)
        # The leaves' credentials before the commit removes any: a removed
        # device is then named by its account and certificate, not its key.
        session.learn_devices((group.group_id,))
    try:
        result = session.mls.process(envelope.payload)
    except MlsError as error:
        if info.kind is not MlsMessageKind.COMMIT:
            raise
        # Reload first: the store is the truth whatever MLS did in memory.
        session.mls.reload(store.mls_rows())
        await _healing.commit_refused(session, group, envelope, finish, error=error)
        return
    if isinstance(result, ApplicationMessage):
        await _application(
            session, group, result, finish, seq=envelope.seq, arrived_ms=envelope.enqueued_at_ms
        )
    elif isinstance(result, CommitApplied):
        await _commit(session, group, result, finish, envelope.group_info_digest)
    else:  # ProposalStored, OwnMessage

        def write(tx: Transaction) -> None:
            tx.apply_changes(result.changes)
            finish(tx)

        session.persist(write)


def _hold(session: Session, group: GroupRow, envelope: Envelope, finish: Finish) -> None:
    """Keep a message of a requested group for after the user's decision."""

    def write(tx: Transaction) -> None:
        _request_bounds.hold(tx, session.store, group.group_id, envelope)
        finish(tx)

    session.persist(write)


async def _commit(
    session: Session,
    group: GroupRow,
    applied: CommitApplied,
    finish: Finish,
    served_digest: bytes = b"",
) -> None:
    leaving = group.status is GroupStatus.LEAVING
    lines = (
        await commit_lines(session, applied, leaving=leaving, group_id=group.group_id)
        if _shows(group)
        else []
    )
    status: GroupStatus = group.status
    if applied.self_removed:
        status = GroupStatus.LEFT if leaving else GroupStatus.REMOVED
    wrong = not applied.self_removed and _healing.served_group_info_wrong(
        session, group, served_digest
    )
    if wrong and _shows(group):
        who = await session.name_of(applied.committer)
        lines.append(
            f"{who}'s change came with a GroupInfo that does not match the group;"
            " the server now gets ours"
        )

    def write(tx: Transaction) -> None:
        tx.apply_changes(applied.changes)
        if applied.self_removed:
            # A Welcome into this group id at or below this epoch is a replay.
            tx.end_group(group.group_id, applied.epoch)
        if wrong:
            tx.set_wrong_group_info(group.group_id, applied.epoch)
        if group.status is GroupStatus.DECLINED:
            if applied.self_removed:
                tx.forget_group(group.group_id)  # the declined invitation is done with
            finish(tx)
            return
        tx.mark_contacts(session.account_of(k) for k in (applied.committer, *applied.added))
        for line in lines:
            tx.add_history(group.group_id, "event", line, sender=applied.committer)
        if status is not group.status:
            tx.set_group_status(group.group_id, status)
        finish(tx)

    session.persist(write)


def _gap(session: Session, envelope: Envelope, finish: Finish) -> None:
    group = session.store.group_by_id(envelope.gap_group_id)
    if group is not None and group.status is GroupStatus.REQUESTED:
        _hold(session, group, envelope, finish)
        return
    live = (GroupStatus.ACTIVE, GroupStatus.LEAVING, GroupStatus.DECLINED)
    if group is None or group.status not in live:
        session.persist(finish)
        return
    _fell_behind(session, group, finish)


def _account_deleted(session: Session, envelope: Envelope, finish: Finish) -> None:
    """The server says a member's account was deleted: note it and say so.

    Its leaves are removed by our next commit in every group it is still in
    (:func:`qpq_client._commits.settle`; the first member online does it,
    the others then process that commit). This is the server's word, as
    its roster is: a lying server could get a member removed this way, in
    plain sight of every member (docs/security.md, "Accounts").
    """
    deleted = envelope.account_deleted
    if deleted == session.me:
        session.persist(finish)  # not something we act on for ourselves
        return
    group = session.store.group_by_id(envelope.group_id) if envelope.group_id else None
    member = (
        group is not None
        and group.group_id in session.mls.group_ids()
        and deleted in session.mls.members(group.group_id)
    )
    who = session.display_name(deleted)
    name = session.store.contact(deleted) or who

    def write(tx: Transaction) -> None:
        tx.set_deleted(deleted, name)
        if member and group is not None and _shows(group):
            tx.add_history(group.group_id, "event", f"{who} deleted their account", sender=deleted)
        finish(tx)

    session.persist(write)


def _fell_behind(session: Session, group: GroupRow, finish: Finish) -> None:
    _log.warning("missed messages in %s; rejoining it", group.name)
    _healing.rejoin_needed(
        session,
        group,
        "some messages could not reach you while your queue was full; rejoining",
        finish,
    )


def _and_seen(finish: Finish, digest: bytes, seq: int) -> Finish:
    def write(tx: Transaction) -> None:
        tx.add_seen(digest, seq=seq)
        finish(tx)

    return write


async def receive_direct(session: Session, message: DirectMessage, *, current: bool) -> bool:
    """Process and persist an application message a member sent us directly.

    ``current``: we just processed everything the server held for us. Then
    the message is taken only if it is of our epoch and its sender a member
    at it; with the server unreachable (not ``current``) it is shown marked
    unconfirmed until the next catch-up (:func:`settle_direct`).

    Returns False for one we already have (it came through the server
    first). Raises DeliveryDeferredError for one we cannot take now (of
    another epoch than ours, from a sender who is not a member, one MLS
    refuses): the state is reloaded and the sender sends it through the
    server, which orders it after what it depends on, and refuses it from
    someone no longer in the group.
    """
    store = session.store
    if store.seen(message.digest):
        return False
    try:
        info = peek_message(message.payload)
        group = store.group_by_id(info.group_id) if info.group_id else None
        if info.kind is not MlsMessageKind.APPLICATION or group is None or not _shows(group):
            raise DeliveryDeferredError("not a message of a group this member shows")
        if current and (
            group.needs_rejoin
            or group.group_id not in session.mls.group_ids()
            or info.epoch != session.mls.epoch(group.group_id)
            # Joined below the server's epoch and still not there, caught up:
            # our state of the group is not the server's (settle rejoins).
            or (group.confirm_epoch or 0) > session.mls.epoch(group.group_id)
        ):
            raise DeliveryDeferredError("not of the group's current epoch")
        result = session.mls.process(message.payload)
    except MlsError as error:
        session.mls.reload(store.mls_rows())
        raise DeliveryDeferredError(type(error).__name__) from None
    if not isinstance(result, ApplicationMessage) or result.sender != message.sender:
        session.mls.reload(store.mls_rows())
        raise DeliveryDeferredError("the message is not the sender's application message")
    if result.sender not in session.mls.members(group.group_id):
        # Not a member at our epoch (removed, writing with keys MLS keeps for
        # late messages): through the server, or not at all.
        session.mls.reload(store.mls_rows())
        raise DeliveryDeferredError("the sender is not a member of the group")
    await _application(
        session,
        group,
        result,
        lambda tx: tx.add_seen(message.digest),
        seq=None,
        arrived_ms=int(time.time() * 1000),
        direct=None if current else "unconfirmed",
    )
    return True


async def _application(
    session: Session,
    group: GroupRow,
    message: ApplicationMessage,
    finish: Finish,
    *,
    seq: int | None,
    arrived_ms: int,
    direct: str | None = None,
) -> None:
    if message.sender not in session.mls.members(group.group_id):
        _drop_from_former_member(session, group, message, finish)
        return
    person = session.store.person(session.account_of(message.sender))
    if not _shows(group) or (person is not None and person.blocked):
        # Declined, or from someone blocked: acknowledged, never shown.
        def drop(tx: Transaction) -> None:
            tx.apply_changes(message.changes)
            finish(tx)

        session.persist(drop)
        return
    content = _plaintext.decode(message.plaintext, max_bytes=session.conn.limits.max_payload_bytes)
    sender = await session.name_of(message.sender)

    def write(tx: Transaction) -> None:
        tx.apply_changes(message.changes)
        if isinstance(content, _plaintext.Text):
            tx.add_history(
                group.group_id,
                "text",
                content.body,
                sender=message.sender,
                sent_at=content.sent_at or arrived_ms,
                seq=seq,
                message_id=content.message_id,
                direct=direct,
            )
        elif isinstance(content, _plaintext.Declined):
            # Its leave follows (a proposal a member commits): that commit
            # then says nothing more about them (commit_lines).
            tx.add_history(
                group.group_id,
                "event",
                f"{sender} declined the invitation",
                sender=message.sender,
                seq=seq,
                message_id=f"{DECLINED_MARK}{message.epoch}",
            )
        elif isinstance(content, _plaintext.GroupMeta):
            if not group.named and direct is None:  # a name only from a confirmed member
                name = session.store.unique_group_name(content.name, own=group.group_id)
                tx.rename_group(group.group_id, name)
                if name != content.name:
                    # Said, not done silently: the person looks for the name
                    # the members use.
                    tx.add_history(
                        group.group_id,
                        "event",
                        f"its members call this group {content.name}; that name is taken"
                        f" here, so it is {name} (qpq group rename {name} NEW)",
                        sender=message.sender,
                        seq=seq,
                    )
        else:
            tx.add_history(
                group.group_id,
                "event",
                f"{sender} sent a message this client cannot show ({content.reason})",
                sender=message.sender,
                seq=seq,
            )
        finish(tx)

    session.persist(write)


def _drop_from_former_member(
    session: Session, group: GroupRow, message: ApplicationMessage, finish: Finish
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
        finish(tx)

    session.persist(write)


def _own_device(session: Session, committer: bytes, key: bytes) -> bool:
    """Whether ``key`` is another device of the committer's own account."""
    return key != committer and session.account_of(key) == session.account_of(committer)


def _device_label(session: Session, key: bytes) -> str:
    """A device as a line names it: its certificate's name, or the account's own key."""
    if session.account_of(key) == key:
        return "first device"
    return session.device_name(key) or key.hex()[:12]


async def _added_line(session: Session, applied: CommitApplied, who: str, key: bytes) -> str:
    """How an added leaf is announced: a new device of an account already in
    the group ("bob linked a new device: laptop-2"), or a person added."""
    if _own_device(session, applied.committer, key):
        account = session.account_of(key)
        others = [k for k in session.mls.members(applied.group_id) if k != key]
        if any(session.account_of(k) == account for k in others):
            return (
                f"{await session.name_of(key)} linked a new device: {_device_label(session, key)}"
            )
    return f"{who} added {await session.name_of(key)}"


#: The message id of a "declined the invitation" line: this, then the epoch.
DECLINED_MARK = "declined-"


def _declined(session: Session, group_id: bytes, member: bytes) -> bool:
    """Whether the last thing ``member`` said in the group is that they declined."""
    last = session.store.last_message_id(group_id, member)
    return last is not None and last.startswith(DECLINED_MARK)


async def commit_lines(
    session: Session,
    applied: CommitApplied,
    *,
    leaving: bool = False,
    group_id: bytes | None = None,
) -> list[str]:
    """What a person should read about a commit (all of it authenticated by MLS)."""
    committer = applied.committer
    # Everyone the lines name, asked in one round trip (a commit may add hundreds).
    await session.names_of((committer, *applied.added, *applied.removed))
    who = "you" if committer == session.me else await session.name_of(committer)
    if applied.external:
        if committer == session.me:
            return []
        if applied.added:
            # A new device of a member account joined by itself (a restored
            # backup): announced as any new device of a contact is.
            session.learn_devices((applied.group_id,))
            return [f"{who} linked a new device: {_device_label(session, committer)}"]
        return [f"{who} rejoined"]
    session.learn_devices((applied.group_id,))
    lines = [await _added_line(session, applied, who, k) for k in applied.added]
    deleted = session.store.deleted_people() if applied.removed else set()
    for key in applied.removed:
        if key == session.me:
            lines.append("you left" if leaving or who == "you" else f"you were removed by {who}")
        elif key == committer or key in applied.left:
            if group_id is not None and _declined(session, group_id, key):
                continue  # "... declined the invitation" was said when they did
            lines.append(f"{await session.name_of(key)} left")
        elif key in deleted:
            lines.append(f"{who} removed {await session.name_of(key)}, whose account was deleted")
        elif _own_device(session, committer, key):
            device = _device_label(session, key)
            lines.append(f"{await session.name_of(key)} removed a device: {device}")
        else:
            lines.append(f"{who} removed {await session.name_of(key)}")
    # A person added or removed with several devices is one line.
    return list(dict.fromkeys(lines))
