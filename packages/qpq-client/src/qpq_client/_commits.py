"""Group changes, sequenced for a strongly consistent server.

A commit is persisted (pending, with an outbox row) before it is published;
only after the server accepted it is it merged and are Welcomes sent
(docs/mls.md, "Commits"). When another member's commit won the epoch, the
server answers EpochConflictError: we process what arrived (which clears
our pending commit, see :mod:`qpq_client._receive`) and try again with the
group as it now is, a bounded number of times.

What received messages leave to do is read from the state, in
:func:`settle`: proposals stored in a group we are active in (a member
leaving) get committed, and a leave of ours that a commit overtook is
proposed again.
"""

from __future__ import annotations

from collections.abc import Callable

from qpq_client import _plaintext
from qpq_client._errors import (
    CommitFailedError,
    GroupExistsError,
    UnknownGroupError,
    UnknownUserError,
)
from qpq_client._receive import merge_own_commit, pending_commit, sync
from qpq_client._sending import publish_row, send_application
from qpq_client._session import Session
from qpq_client._state import (
    GroupRow,
    GroupState,
    OutboxKind,
    OutboxRow,
    OutboxState,
    Transaction,
)
from qpq_core import CommitApplied, CommitBundle, NotAMemberError
from qpq_proto import MessageKind
from qpq_proto.errors import EpochConflictError, NotFoundError

__all__ = [
    "create_group",
    "flush_outbox",
    "group_named",
    "invite",
    "leave",
    "remove",
    "settle",
    "update",
]

MAX_COMMIT_ATTEMPTS = 8

#: Makes the commit to attempt from the group's current state, or None if nothing is left to do.
BundleMaker = Callable[[], CommitBundle | None]


def group_named(session: Session, name: str, *, active: bool = True) -> GroupRow:
    """The local group called ``name``; with ``active``, one we are still in."""
    group = session.store.group_by_name(name)
    if group is None:
        raise UnknownGroupError(f"no group named {name!r} (see `qpq group list`)")
    if active and group.state is not GroupState.ACTIVE:
        raise NotAMemberError(f"you are no longer a member of {name!r} ({group.state.value})")
    return group


async def _resolve_users(session: Session, usernames: tuple[str, ...]) -> list[bytes]:
    keys = []
    for username in usernames:
        try:
            key = await session.conn.resolve_user(username)
        except NotFoundError:
            raise UnknownUserError(f"the server knows no user named {username!r}") from None
        session.persist(lambda tx, k=key, u=username: tx.put_contact(k, u))  # type: ignore[misc]
        keys.append(key)
    return keys


def create_group(session: Session, name: str) -> GroupRow:
    """A new group with only us in it, under ``name``."""
    name = " ".join(name.split())
    if not name:
        raise GroupExistsError("a group name must not be empty")
    if session.store.group_by_name(name) is not None:
        raise GroupExistsError(f"you already have a group named {name!r}")
    created = session.mls.create_group()

    def write(tx: Transaction) -> None:
        tx.apply_changes(created.changes)
        tx.add_group(created.group_id, name, named=True)

    session.persist(write)
    return GroupRow(created.group_id, name, GroupState.ACTIVE, True)


async def invite(session: Session, name: str, usernames: tuple[str, ...]) -> list[str]:
    """Add users to the group; returns the usernames actually added."""
    group = group_named(session, name)
    keys = await _resolve_users(session, usernames)
    wanted = {k: u for k, u in zip(keys, usernames, strict=True) if k != session.me}
    packages: dict[bytes, bytes] = {}
    members = set(session.mls.members(group.group_id))
    for key, username in wanted.items():
        if key in members:
            continue
        try:
            packages[key] = await session.conn.fetch_key_package(key)
        except NotFoundError:
            raise UnknownUserError(
                f"{username} has no KeyPackages on the server (they must run qpq once)"
            ) from None

    def make() -> CommitBundle | None:
        current = set(session.mls.members(group.group_id))
        todo = [kp for key, kp in packages.items() if key not in current]
        return session.mls.add_members(group.group_id, todo) if todo else None

    await _commit(session, group.group_id, make, new_members=tuple(packages))
    return [wanted[k] for k in packages]


async def remove(session: Session, name: str, usernames: tuple[str, ...]) -> None:
    """Remove users from the group."""
    group = group_named(session, name)
    keys = await _resolve_users(session, usernames)
    members = set(session.mls.members(group.group_id))
    for key, username in zip(keys, usernames, strict=True):
        if key == session.me:
            raise NotAMemberError("to remove yourself, use `qpq group leave`")
        if key not in members:
            raise NotAMemberError(f"{username} is not a member of {name!r}")

    def make() -> CommitBundle | None:
        current = set(session.mls.members(group.group_id))
        todo = [k for k in keys if k in current]
        return session.mls.remove_members(group.group_id, todo) if todo else None

    # The removed members get the commit too, so they learn they are out.
    await _commit(session, group.group_id, make, extra_recipients=tuple(keys))


async def update(session: Session, name: str) -> None:
    """Commit a fresh leaf key for us (RFC 9420 §12.4: post-compromise security).

    Once merged, secrets of earlier epochs that an attacker may have taken
    from this device no longer open new messages.
    """
    group = group_named(session, name)
    await _commit(session, group.group_id, lambda: session.mls.self_update(group.group_id))


async def leave(session: Session, name: str) -> None:
    """Propose our removal; another member commits it (we cannot commit our own leave)."""
    group = group_named(session, name)
    await _propose_leave(session, group.group_id)


async def _propose_leave(session: Session, group_id: bytes) -> None:
    others = session.others(group_id)
    if not others:
        session.persist(lambda tx: tx.set_group_state(group_id, GroupState.LEFT))
        return
    proposal = session.mls.leave(group_id)
    epoch = session.mls.epoch(group_id)

    def write(tx: Transaction) -> int:
        tx.apply_changes(proposal.changes)
        tx.set_group_state(group_id, GroupState.LEAVING)
        return tx.add_outbox(OutboxKind.PROPOSAL, group_id, epoch, proposal.proposal, others)

    outbox_id = session.persist(write)
    await session.conn.publish(group_id, epoch, MessageKind.PROPOSAL, proposal.proposal, others)
    session.persist(lambda tx: tx.delete_outbox(outbox_id))


def _proposals_maker(session: Session, group_id: bytes) -> BundleMaker:
    def make() -> CommitBundle | None:
        if not session.mls.has_pending_proposals(group_id):
            return None
        return session.mls.commit_pending_proposals(group_id)

    return make


async def _commit(
    session: Session,
    group_id: bytes,
    make: BundleMaker,
    *,
    new_members: tuple[bytes, ...] = (),
    extra_recipients: tuple[bytes, ...] = (),
    commits_proposals: bool = False,
) -> CommitApplied | None:
    """Publish a commit made by ``make``, retrying after lost epoch races.

    The caller has caught up with the server; after a lost race,
    :func:`_publish_commit` catches up again before the next attempt.

    Raises:
        CommitFailedError: every attempt lost against concurrent commits.
    """
    for _ in range(MAX_COMMIT_ATTEMPTS):
        group = session.store.group_by_id(group_id)
        if group is None or group.state is not GroupState.ACTIVE:
            raise NotAMemberError("you are no longer a member of this group")
        if not commits_proposals and session.mls.has_pending_proposals(group_id):
            # Proposals received (a member leaving) must be committed first.
            await _commit(
                session, group_id, _proposals_maker(session, group_id), commits_proposals=True
            )
            continue
        bundle = make()
        if bundle is None:
            return None
        recipients = tuple(
            dict.fromkeys(
                [*session.others(group_id), *(k for k in extra_recipients if k != session.me)]
            )
        )
        added = new_members if bundle.welcome is not None else ()
        outbox_id = _persist_commit(session, bundle, recipients, added)
        applied = await _publish_commit(session, _outbox_row(session, outbox_id), recovering=False)
        if applied is not None:
            await _deliver_welcomes(session, _outbox_row(session, outbox_id))
            return applied
    raise CommitFailedError(
        f"gave up after {MAX_COMMIT_ATTEMPTS} attempts: the group kept changing; try again"
    )


def _persist_commit(
    session: Session, bundle: CommitBundle, recipients: tuple[bytes, ...], added: tuple[bytes, ...]
) -> int:
    def write(tx: Transaction) -> int:
        tx.apply_changes(bundle.changes)
        return tx.add_outbox(
            OutboxKind.COMMIT,
            bundle.group_id,
            bundle.epoch,
            bundle.commit,
            recipients,
            welcome=bundle.welcome,
            new_members=added,
        )

    return session.persist(write)


def _outbox_row(session: Session, outbox_id: int) -> OutboxRow | None:
    return next((r for r in session.store.outbox() if r.id == outbox_id), None)


async def _publish_commit(
    session: Session, row: OutboxRow | None, *, recovering: bool
) -> CommitApplied | None:
    """Publish a pending commit; merge it if accepted, else clear it. None if it lost.

    ``recovering``: the commit may already have been accepted before a crash,
    so a conflict with nothing newer in our queue means it was ours.
    """
    if row is None:
        return None
    try:
        if row.recipients:
            await session.conn.publish(
                row.group_id, row.epoch, MessageKind.COMMIT, row.payload, row.recipients
            )
    except EpochConflictError:
        await sync(session)  # settles our pending commit if the queue shows who won
        still = pending_commit(session.store, row.group_id)
        if still is None or still.id != row.id:
            session.persist(lambda tx: tx.delete_outbox(row.id))
            return None
        if recovering:
            return await merge_own_commit(session, row)
        cleared = session.mls.clear_pending_commit(row.group_id)

        def write(tx: Transaction) -> None:
            tx.apply_changes(cleared.changes)
            tx.delete_outbox(row.id)

        session.persist(write)
        return None
    return await merge_own_commit(session, row)


async def _deliver_welcomes(session: Session, row: OutboxRow | None) -> None:
    """Send the Welcome of a merged commit to each new member, then the group name."""
    if row is None or row.state is not OutboxState.MERGED:
        return
    if row.welcome is not None:
        for member in row.new_members:
            await session.conn.enqueue(member, row.welcome)
        group = session.store.group_by_id(row.group_id)
        members = set(session.mls.members(row.group_id))
        joined = tuple(k for k in row.new_members if k in members)
        if group is not None and joined:
            await send_application(
                session, row.group_id, _plaintext.encode_meta(group.name), joined
            )
    session.persist(lambda tx: tx.delete_outbox(row.id))


async def flush_outbox(session: Session) -> None:
    """Finish what a previous run persisted but could not hand to the server."""
    for row in session.store.outbox():
        if row.kind is not OutboxKind.COMMIT:
            await publish_row(session, row)
        elif row.state is OutboxState.PENDING:
            if await _publish_commit(session, row, recovering=True) is not None:
                await _deliver_welcomes(session, _outbox_row(session, row.id))
        elif row.state is OutboxState.MERGED:
            await _deliver_welcomes(session, row)
        else:  # lost: the user saw the operation fail
            session.persist(lambda tx, i=row.id: tx.delete_outbox(i))  # type: ignore[misc]


async def settle(session: Session) -> None:
    """Do what the group state asks for after receiving.

    Proposals stored in a group we are active in (a member's leave) are
    committed; MLS refuses to send in that group until they are. A group we
    are leaving whose epoch moved on without our leave proposal (a commit
    overtook it, and MLS dropped it) gets the proposal again.
    """
    for group in session.store.groups():
        pending = session.mls.has_pending_proposals(group.group_id) if _held(group) else False
        if group.state is GroupState.ACTIVE and pending:
            await _commit(
                session,
                group.group_id,
                _proposals_maker(session, group.group_id),
                commits_proposals=True,
            )
        elif group.state is GroupState.LEAVING and not pending:
            await _propose_leave(session, group.group_id)


def _held(group: GroupRow) -> bool:
    """Whether the MLS state still holds the group."""
    return group.state in (GroupState.ACTIVE, GroupState.LEAVING)
