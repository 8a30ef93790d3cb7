"""Members healing themselves from what the server cannot check (docs/mls.md, "Healing").

The server verifies a commit's signature, epoch and proposals against the
group's public state; a commit's membership tag and encrypted path
secrets, and a GroupInfo's ``external_pub``, only members can check. This
is what a member does about it:

- on receiving: a commit the server delivered that our MLS refuses marks
  the group for a rejoin by external commit, with one line naming the
  committer (:func:`commit_refused`); another member's commit for the
  epoch our pending commit is for means ours lost (:func:`drop_lost_commit`);
  a served GroupInfo that is not our view of the epoch is noted
  (:func:`served_group_info_wrong`);
- when settling (:func:`qpq_client._commits.settle`): our own GroupInfo
  replaces a wrong one (:func:`replace_group_info`), and a group joined
  below the server's epoch must have reached it once caught up
  (:func:`confirm_join`).

The rejoin itself is a commit, made and published by :mod:`qpq_client._commits`.
"""

from __future__ import annotations

import logging

from qpq_client._rows import GroupRow, OutboxKind, OutboxState
from qpq_client._session import Finish, Session
from qpq_client._state import Transaction
from qpq_core import (
    CommitConflictError,
    InternalMlsError,
    MessageInfo,
    MlsError,
    StateCorruptError,
    peek_message,
)
from qpq_proto import Envelope
from qpq_proto.errors import (
    EpochConflictError,
    ForbiddenError,
    InvalidArgumentError,
    NotFoundError,
)

__all__ = [
    "commit_refused",
    "confirm_join",
    "drop_lost_commit",
    "rejoin_needed",
    "replace_group_info",
    "served_group_info_wrong",
]

_log = logging.getLogger("qpq_client")


#: Refusals that say something about our own state, not about the commit.
_OUR_STATE = (CommitConflictError, StateCorruptError, InternalMlsError)


async def commit_refused(
    session: Session, group: GroupRow, envelope: Envelope, finish: Finish, *, error: MlsError
) -> None:
    """A commit the server accepted that our MLS does not take: rejoin (one line).

    The server checked everything it can; what it cannot (the membership tag,
    the encrypted path secrets, RFC 9420 §6.2, §12.4.2) only members can,
    and a member who cannot process a commit cannot follow the group any
    more: retrying cannot help, a resync by external commit does.
    """
    gid = group.group_id
    held = gid in session.mls.group_ids()
    ours = session.mls.epoch(gid) if held else None
    framed = peek_message(envelope.payload).epoch
    epoch = framed if framed is not None else -1
    if ours is not None and epoch < ours:
        session.persist(finish)  # an epoch we rejoined past: nothing in it is ours to follow
        return
    if group.needs_rejoin or not held:
        session.persist(finish)  # already on our way back in: one rejoin covers it
        return
    who = await session.name_of(envelope.sender)
    if epoch > (ours or 0):
        line = f"{who}'s change to the group came after changes that did not reach you; rejoining"
    elif isinstance(error, _OUR_STATE):
        line = f"your copy of the group could not take {who}'s change; rejoining"
    else:
        line = f"{who}'s change to the group could not be processed; rejoining"
    _log.warning(
        "a commit from %s in %s could not be processed (%s, epoch %d); rejoining",
        who,
        group.name,
        type(error).__name__,
        epoch,
    )
    rejoin_needed(session, group, line, finish)


def drop_lost_commit(session: Session, group: GroupRow, info: MessageInfo) -> None:
    """Another member's commit for the epoch our pending commit is for: the
    server took theirs (one per epoch), so ours lost. Clear it and its outbox row."""
    gid = group.group_id
    if gid not in session.mls.group_ids() or not session.mls.has_pending_commit(gid):
        return
    lost = [
        row.id
        for row in session.store.outbox()
        if row.group_id == gid
        and row.kind is OutboxKind.COMMIT
        and row.state is OutboxState.PENDING
        and row.epoch == info.epoch
    ]
    if not lost:
        return  # ours may have been accepted: the outbox finds out (flush_outbox)
    cleared = session.mls.clear_pending_commit(gid)

    def write(tx: Transaction) -> None:
        tx.apply_changes(cleared.changes)
        for row_id in lost:
            tx.delete_outbox(row_id)

    session.persist(write)


def served_group_info_wrong(session: Session, group: GroupRow, served_digest: bytes) -> bool:
    """Whether the GroupInfo the server accepted with a commit is not our view of
    the epoch it created (only members derive its ``external_pub``)."""
    if not served_digest:
        return False  # a server that does not say which one it keeps
    own = session.mls.group_info_facts(group.group_id)
    if own.digest == served_digest:
        return False
    _log.warning(
        "the GroupInfo served for %s at epoch %d is not the group's; sending ours",
        group.name,
        own.epoch,
    )
    return True


def rejoin_needed(session: Session, group: GroupRow, line: str, finish: Finish) -> None:
    """Mark the group for a rejoin (:func:`qpq_client._commits.settle`), with ``line``."""

    def write(tx: Transaction) -> None:
        if not group.needs_rejoin:
            tx.set_needs_rejoin(group.group_id, True)
            if group.shows_history:
                tx.add_history(group.group_id, "event", line, sender=None)
        finish(tx)

    session.persist(write)


def confirm_join(session: Session, group: GroupRow) -> GroupRow:
    """A group joined below the server's epoch: caught up, we must have reached it.

    Every commit after the one that added us was queued for us; a Welcome
    into a state the group never had cannot process them, or leaves us
    below the epoch the server named when we joined.
    """
    gid = group.group_id
    reached = session.mls.epoch(gid) >= (group.confirm_epoch or 0)
    if not reached:
        _log.warning("%s did not reach the server's epoch after joining; rejoining", group.name)

    def write(tx: Transaction) -> None:
        tx.set_confirm_epoch(gid, None)
        if not reached and not group.needs_rejoin:
            tx.set_needs_rejoin(gid, True)
            tx.add_history(
                gid,
                "event",
                "the group's state did not match the server's after you joined; rejoining",
                sender=None,
            )

    session.persist(write)
    return session.store.group_by_id(gid) or group


async def replace_group_info(session: Session, group: GroupRow) -> None:
    """Send the server our own GroupInfo of the epoch whose served one is not ours.

    Only while we are still at that epoch (the server takes a GroupInfo of
    its current epoch only). A refusal of anything but lateness means our
    own view of the epoch is not the group's (it checks the group context
    against its state): then it is we who rejoin.
    """
    gid = group.group_id
    epoch = session.mls.epoch(gid)
    if group.wrong_group_info == epoch:
        try:
            await session.conn.replace_group_info(gid, session.mls.export_group_info(gid))
        except (EpochConflictError, NotFoundError):
            pass  # the group moved on (or is gone): that GroupInfo is no longer served
        except (ForbiddenError, InvalidArgumentError) as refused:
            _log.warning(
                "the server refused our GroupInfo of %s (%s); rejoining",
                group.name,
                type(refused).__name__,
            )
            session.persist(lambda tx: tx.set_needs_rejoin(gid, True))
    session.persist(lambda tx: tx.set_wrong_group_info(gid, None))
