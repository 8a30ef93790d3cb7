"""Group changes, sequenced by a server that verifies and orders them.

A commit is persisted (pending, with an outbox row) before it is published,
and merged only once the server accepted it (docs/mls.md, "Commits and the
delivery service"); the server routes its Welcome to the members it adds.
When another member's commit took the epoch, the server answers
EpochConflictError naming the accepted commit's hash: if it is ours (a retry
after a lost answer, or a crash), we merge; otherwise we clear ours, process
what arrived, and try again with the group as it now is, a bounded number of
times. Nothing here trusts a cleartext field of a message: the outcome of
our commit comes from the server's answer, and everything else from what
MLS authenticated.

What received messages leave to do is read from the state, in
:func:`settle`: proposals stored in a group we are active in (a member
leaving) get committed, a leave of ours that a commit overtook is proposed
again, a group we cannot follow from our state (the server could not queue
its messages for us, or our MLS refused a commit the server accepted) is
rejoined by external commit, a GroupInfo the server serves that is not our
view of the epoch is replaced with ours, a group joined below the
server's epoch that we still have not caught up with is rejoined, and the
leaves of members whose account was deleted are removed.

Healing, and what it costs (docs/security.md): a commit our MLS refuses
costs one rejoin, never a retry loop. After an ``epochConflict`` we process
what arrived; if our epoch is still below the one the server named, a
commit we could not process was among it, and we rejoin instead of trying
again, then go on with the user's operation on the new state. A rejoin is
a commit too and may lose its epoch to another member's (several members
healing at once): it is tried again after a short random pause, and every
attempt, rejoin or not, counts against the operation's
:data:`MAX_COMMIT_ATTEMPTS`; what is left is tried again on the next
operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import Callable

from qpq_client import _healing, _outbox, _plaintext, _trust
from qpq_client._device_keys import current_devices
from qpq_client._errors import (
    CommitFailedError,
    GroupExistsError,
    KeyPackageMismatchError,
    UnknownGroupError,
    UnknownUserError,
)
from qpq_client._receive import commit_lines, sync
from qpq_client._rows import GroupRow, GroupStatus, OutboxKind, OutboxRow, OutboxState
from qpq_client._sending import publish_row, send_application
from qpq_client._session import Session
from qpq_client._state import Transaction
from qpq_core import (
    CommitApplied,
    CommitBundle,
    MlsError,
    NotAMemberError,
    Suite,
    UnsupportedCiphersuiteError,
    group_info_facts,
    validate_key_package,
)
from qpq_proto import MessageKind
from qpq_proto.errors import (
    AlreadyExistsError,
    EpochConflictError,
    ForbiddenError,
    InvalidArgumentError,
    NotFoundError,
    PayloadTooLargeError,
    QuotaExceededError,
    ServiceError,
)

__all__ = [
    "create_group",
    "flush_outbox",
    "group_named",
    "invite",
    "leave",
    "propose_leave",
    "remove",
    "settle",
    "update",
]

MAX_COMMIT_ATTEMPTS = 8
#: The first pause after a rejoin lost its epoch to another commit (seconds,
#: doubled after each loss up to :data:`REJOIN_BACKOFF_MAX_SECONDS`, a random
#: fraction of it taken).
REJOIN_BACKOFF_SECONDS = 0.05
REJOIN_BACKOFF_MAX_SECONDS = 1.0
_log = logging.getLogger("qpq_client")
#: Group states whose MLS group we still act in.
_SETTLED = (GroupStatus.ACTIVE, GroupStatus.LEAVING, GroupStatus.DECLINED)

#: A new group the server refuses like this is forgotten, not registered again.
_NOT_REGISTERED: tuple[type[ServiceError], ...] = (*_outbox.REFUSED_FOR_GOOD, QuotaExceededError)

#: Makes the commit to attempt from the group's current state, or None if nothing is left to do.
BundleMaker = Callable[[], CommitBundle | None]


def group_named(session: Session, name: str, *, active: bool = True) -> GroupRow:
    """The local group called ``name``; with ``active``, one we are still in."""
    group = session.store.group_by_name(name)
    if group is None:
        raise UnknownGroupError(f"no group named {name!r} (see `qpq group list`)")
    if group.status is GroupStatus.REQUESTED:
        raise NotAMemberError(
            f"you have not accepted the invitation to {name!r}: qpq group accept {name}"
        )
    if active and group.status is not GroupStatus.ACTIVE:
        raise NotAMemberError(f"you are no longer a member of {name!r} ({group.status.value})")
    return group


async def _resolve_users(session: Session, usernames: tuple[str, ...]) -> list[bytes]:
    return [await _trust.resolve(session, username) for username in usernames]


async def _claim_key_package(session: Session, key: bytes, username: str, suite: Suite) -> bytes:
    """One KeyPackage of ``key`` for a group of ``suite``, checked to be that
    identity's and of that suite (the server might swap it)."""
    try:
        package = await session.conn.fetch_key_package(key, suite)
    except NotFoundError:
        if suite is Suite.DEFAULT:
            raise UnknownUserError(
                f"{username} has no KeyPackages on the server (they must run qpq once)"
            ) from None
        # A group takes only KeyPackages of its own suite (RFC 9420 §12.1.1):
        # whoever has published none of it cannot be added, whatever else
        # they have.
        raise UnknownUserError(
            f"{username} has no KeyPackages of the {suite.label} ciphersuite on the server"
            f" (their client does not offer it), so cannot join this {suite.label} group;"
            f" {username} was not invited"
        ) from None
    info = validate_key_package(package)
    if info.identity_key != key:
        raise KeyPackageMismatchError(
            f"the server answered with a KeyPackage of another identity for {username};"
            f" {username} was not invited"
        )
    if info.ciphersuite != suite:
        raise KeyPackageMismatchError(
            f"the server answered with a KeyPackage of another ciphersuite for {username};"
            f" {username} was not invited"
        )
    return package


async def create_group(session: Session, name: str, suite: Suite = Suite.DEFAULT) -> GroupRow:
    """A new group of ``suite`` with only us in it, under ``name``, registered on the server."""
    name = " ".join(name.split())
    if not name:
        raise GroupExistsError("a group name must not be empty")
    if session.store.group_by_name(name) is not None:
        raise GroupExistsError(f"you already have a group named {name!r}")
    created = session.mls.create_group(suite=suite)

    def write(tx: Transaction) -> int:
        tx.apply_changes(created.changes)
        tx.add_group(created.group_id, name, named=True)
        return tx.add_outbox(OutboxKind.GROUP, created.group_id, 0, created.group_info)

    outbox_id = session.persist(write)
    await _register(session, _outbox_row(session, outbox_id))
    return GroupRow(created.group_id, name, GroupStatus.ACTIVE, True)


async def _register(session: Session, row: OutboxRow | None) -> None:
    """Register a new group on the server; a retry finding it there is done too."""
    if row is None:
        return
    # AlreadyExists: taken by our own earlier attempt (its answer was lost),
    # so the server holds it. Another client's group under our random
    # 16-byte id would need a collision no one can arrange.
    try:
        with contextlib.suppress(AlreadyExistsError):
            await session.conn.create_group(row.payload)
    except _NOT_REGISTERED:
        # A group the server will not register is no group: forget it, so
        # that it does not wait in the outbox forever.
        def forget(tx: Transaction) -> None:
            tx.delete_outbox(row.id)
            tx.forget_group(row.group_id)

        session.persist(forget)
        raise
    session.persist(lambda tx: tx.delete_outbox(row.id))


async def invite(session: Session, name: str, usernames: tuple[str, ...]) -> list[str]:
    """Add users to the group, each with every current device of their account
    (one KeyPackage per device); returns the usernames actually added."""
    group = group_named(session, name)
    accounts = await _resolve_users(session, usernames)
    wanted = {k: u for k, u in zip(accounts, usernames, strict=True) if k != session.account}
    packages: dict[bytes, bytes] = {}
    members = set(session.mls.members(group.group_id))
    suite = session.mls.group_suite(group.group_id)
    added: list[str] = []
    for account, username in wanted.items():
        devices = await current_devices(session, account)
        missing = [d for d in devices if d not in members]
        claimed = await _claim_each(session, missing, username, suite)
        packages.update(claimed)
        if claimed:
            added.append(username)

    def make() -> CommitBundle | None:
        current = set(session.mls.members(group.group_id))
        todo = [kp for key, kp in packages.items() if key not in current]
        return session.mls.add_members(group.group_id, todo) if todo else None

    await _commit(session, group.group_id, make)
    return added


async def _claim_each(
    session: Session, devices: list[bytes], username: str, suite: Suite
) -> dict[bytes, bytes]:
    """A KeyPackage of each of ``devices`` (one person's); a device without any is
    left out (it joins when it has some, by a later invite or its own account),
    unless none of them has one."""
    claimed: dict[bytes, bytes] = {}
    first: UnknownUserError | None = None
    for device in devices:
        try:
            claimed[device] = await _claim_key_package(session, device, username, suite)
        except UnknownUserError as error:
            first = first or error
    if devices and not claimed and first is not None:
        raise first
    return claimed


async def add_devices(session: Session, group_id: bytes, packages: dict[bytes, bytes]) -> None:
    """Add devices of our own account to a group by one commit (``packages``: one
    KeyPackage per device key, claimed and checked)."""

    def make() -> CommitBundle | None:
        current = set(session.mls.members(group_id))
        todo = [kp for key, kp in packages.items() if key not in current]
        return session.mls.add_members(group_id, todo) if todo else None

    await _commit(session, group_id, make)


async def claim_own_devices(
    session: Session, group_id: bytes, devices: list[bytes]
) -> dict[bytes, bytes]:
    """A KeyPackage of each of our other ``devices`` that has one for the group's suite."""
    packages: dict[bytes, bytes] = {}
    for device in devices:
        with contextlib.suppress(UnknownUserError, KeyPackageMismatchError):
            packages[device] = await claim_own_device(session, device, group_id)
    return packages


async def claim_own_device(session: Session, device: bytes, group_id: bytes) -> bytes:
    """A KeyPackage of a device of our account for the group's suite (UnknownUserError:
    it has none yet)."""
    return await _claim_key_package(
        session, device, session.username, session.mls.group_suite(group_id)
    )


async def remove(session: Session, name: str, usernames: tuple[str, ...]) -> None:
    """Remove users, with every leaf of their account, from the group (the server
    sends them the commit too)."""
    group = group_named(session, name)
    accounts = await _resolve_users(session, usernames)
    leaves: list[bytes] = []
    for account, username in zip(accounts, usernames, strict=True):
        if account == session.account:
            raise NotAMemberError("to remove yourself, use `qpq group leave`")
        theirs = session.account_devices(group.group_id, account)
        if not theirs:
            raise NotAMemberError(f"{username} is not a member of {name!r}")
        leaves.extend(theirs)
    await remove_leaves(session, group.group_id, leaves)


async def remove_leaves(session: Session, group_id: bytes, keys: list[bytes]) -> None:
    """Commit the removal of the leaves of ``keys`` that are still in the group."""

    def make() -> CommitBundle | None:
        current = set(session.mls.members(group_id))
        todo = [k for k in keys if k in current]
        return session.mls.remove_members(group_id, todo) if todo else None

    await _commit(session, group_id, make)


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
    await propose_leave(session, group.group_id)


async def propose_leave(session: Session, group_id: bytes) -> None:
    """Propose our removal from the group (another member commits it)."""
    group = session.store.group_by_id(group_id)
    declined = group is not None and group.status is GroupStatus.DECLINED
    if not session.others(group_id):
        last = session.mls.epoch(group_id)

        def alone(tx: Transaction) -> None:
            if declined:
                tx.forget_group(group_id)
            else:
                tx.set_group_status(group_id, GroupStatus.LEFT)
            tx.end_group(group_id, last)

        session.persist(alone)
        return
    proposal = session.mls.leave(group_id)
    epoch = session.mls.epoch(group_id)

    def write(tx: Transaction) -> int:
        tx.apply_changes(proposal.changes)
        if not declined:  # a declined group stays quiet until we are out
            tx.set_group_status(group_id, GroupStatus.LEAVING)
        return tx.add_outbox(OutboxKind.PROPOSAL, group_id, epoch, proposal.proposal)

    outbox_id = session.persist(write)
    row = _outbox_row(session, outbox_id)
    if row is not None:
        await publish_row(session, row)


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
    commits_proposals: bool = False,
) -> CommitApplied | None:
    """Publish a commit made by ``make``, retrying after lost epoch races.

    The caller has caught up with the server; after a lost race,
    :func:`_publish_commit` catches up again before the next attempt.

    Raises:
        CommitFailedError: every attempt lost against concurrent commits.
    """
    for attempt in range(MAX_COMMIT_ATTEMPTS):
        group = session.store.group_by_id(group_id)
        if group is None or group.status is not GroupStatus.ACTIVE:
            raise NotAMemberError("you are no longer a member of this group")
        if group.needs_rejoin or group_id not in session.mls.group_ids():
            # A commit we could not process: resync first, then go on with
            # the operation on the group as it now is. The attempt counts.
            await _rejoin_attempt(session, group, attempt)
            continue
        if not commits_proposals and session.mls.has_pending_proposals(group_id):
            # Proposals received (a member leaving) must be committed first.
            await _commit(
                session, group_id, _proposals_maker(session, group_id), commits_proposals=True
            )
            continue
        bundle = make()
        if bundle is None:
            return None
        outbox_id = _persist_commit(session, bundle)
        applied = await _publish_commit(session, _outbox_row(session, outbox_id))
        if applied is not None:
            await _announce_name(session, _outbox_row(session, outbox_id))
            return applied
    raise CommitFailedError(
        f"gave up after {MAX_COMMIT_ATTEMPTS} attempts: the group kept changing; try again"
    )


def _persist_commit(session: Session, bundle: CommitBundle, *, drop: tuple[int, ...] = ()) -> int:
    def write(tx: Transaction) -> int:
        tx.apply_changes(bundle.changes)
        for row_id in drop:
            tx.delete_outbox(row_id)
        return tx.add_outbox(
            OutboxKind.COMMIT,
            bundle.group_id,
            bundle.epoch,
            bundle.commit,
            welcome=bundle.welcome,
            group_info=bundle.group_info,
        )

    return session.persist(write)


def _outbox_row(session: Session, outbox_id: int) -> OutboxRow | None:
    return next((r for r in session.store.outbox() if r.id == outbox_id), None)


async def _publish_commit(session: Session, row: OutboxRow | None) -> CommitApplied | None:
    """Publish a pending commit; merge it if the server accepted it, else clear it.

    Returns None when another commit took the epoch (the caller may retry).
    The server's answer alone decides: accepted, or a conflict naming the
    accepted commit, which may be this one (sent before a crash or a lost
    answer). A commit the server refuses for good is cleared and the error
    raised.
    """
    if row is None:
        return None
    try:
        await session.conn.publish(
            row.group_id,
            row.epoch,
            MessageKind.COMMIT,
            row.payload,
            welcome=row.welcome or b"",
            group_info=row.group_info or b"",
        )
    except EpochConflictError as conflict:
        if conflict.accepted_commit == hashlib.sha256(row.payload).digest():
            return await _merge(session, row)
        _clear(session, row)
        await sync(session)  # the winning commit is in our queue
        _behind_after_conflict(session, row.group_id, conflict.epoch)
        return None
    except (ForbiddenError, InvalidArgumentError, NotFoundError, PayloadTooLargeError):
        _clear(session, row)
        raise
    return await _merge(session, row)


def _behind_after_conflict(session: Session, group_id: bytes, server_epoch: int) -> None:
    """After a lost race and a catch-up, our epoch must have reached the server's:
    every commit up to it was in our queue. If not, one of them could not be
    processed (it marked the group already, or nothing told us): rejoin, not retry."""
    group = session.store.group_by_id(group_id)
    if group is None or group.needs_rejoin or group.status not in _SETTLED:
        return
    held = group_id in session.mls.group_ids()
    if held and session.mls.epoch(group_id) >= server_epoch:
        return
    _log.warning("still behind %s after catching up; rejoining it", group.name)
    session.persist(lambda tx: tx.set_needs_rejoin(group_id, True))


def _clear(session: Session, row: OutboxRow) -> None:
    cleared = session.mls.clear_pending_commit(row.group_id)

    def write(tx: Transaction) -> None:
        tx.apply_changes(cleared.changes)
        tx.delete_outbox(row.id)

    session.persist(write)


async def _merge(session: Session, row: OutboxRow) -> CommitApplied:
    """Merge our accepted commit; the outbox row then holds the group name to announce."""
    session.learn_devices((row.group_id,))  # name the leaves it removes (commit_lines)
    applied = session.mls.merge_pending_commit(row.group_id)
    lines = await commit_lines(session, applied, group_id=row.group_id)
    # What the user asked for they already saw; a leave we completed for
    # someone else is news.
    shown = not applied.left

    def write(tx: Transaction) -> None:
        tx.apply_changes(applied.changes)
        for line in lines:
            tx.add_history(row.group_id, "event", line, sender=session.me, shown=shown)
        if applied.external:
            tx.set_needs_rejoin(row.group_id, False)
        if applied.added:
            tx.set_outbox_state(row.id, OutboxState.MERGED)
        else:
            tx.delete_outbox(row.id)

    session.persist(write)
    return applied


async def _announce_name(session: Session, row: OutboxRow | None) -> None:
    """Tell members who just joined the name we use for the group, then drop the row."""
    if row is None or row.state is not OutboxState.MERGED:
        return
    group = session.store.group_by_id(row.group_id)
    if group is not None and group.status is GroupStatus.ACTIVE:
        await send_application(session, row.group_id, _plaintext.encode_meta(group.name))
    session.persist(lambda tx: tx.delete_outbox(row.id))


async def flush_outbox(session: Session, *, before: int | None = None) -> bool:
    """Finish what a previous run persisted but could not hand to the server.

    Messages this process is sending right now are theirs to finish. What
    the server refuses for good is dropped and reported; what it cannot take
    now waits, in order, for the next operation, which goes on meanwhile:
    nothing in the outbox can stop the user's commands (:mod:`_outbox`).
    With ``before``, only rows older than that outbox id. Returns False when
    something still waits.
    """
    rows = [
        row
        for row in session.store.outbox()
        if row.id not in session.sending and (before is None or row.id < before)
    ]
    if rows:
        # A row another process committed may not be on disk yet: nothing of
        # it leaves before it is (its ratchet generation must never be reused).
        await session.store.sync_to_disk(others=True)
    for row in rows:
        if not await _outbox.attempt(_flush_row(session, row)):
            return False
    return True


async def _flush_row(session: Session, row: OutboxRow) -> None:
    if row.kind is OutboxKind.GROUP:
        await _register(session, row)
    elif row.kind is not OutboxKind.COMMIT:
        await publish_row(session, row)
    elif row.state is OutboxState.PENDING:
        if await _publish_commit(session, row) is not None:
            await _announce_name(session, _outbox_row(session, row.id))
    else:  # merged: the group's name is still to tell the members it added
        await _announce_name(session, row)


async def settle(session: Session, *, caught_up: bool = False) -> None:
    """Do what the group state asks for after receiving.

    A group we cannot follow from our state (the server could not queue its
    messages for us, or a commit it accepted was refused by our MLS) is
    rejoined. Proposals stored in a group we are active in (a member's
    leave) are committed; MLS refuses to send in that group until they are.
    A group we are leaving (or declined) whose epoch moved on without our
    leave proposal (a commit overtook it, and MLS dropped it) gets the
    proposal again. A GroupInfo the server serves for our epoch that is not
    our view of it is replaced with ours. With ``caught_up`` (everything the
    server held for us was just processed), a group joined below the
    server's epoch must have reached it, else it is rejoined.
    """
    held = set(session.mls.group_ids())
    for group in session.store.groups():
        if group.status not in _SETTLED or group.archived_from is not None:
            continue
        try:
            await _settle_group(session, group, group.group_id in held, caught_up=caught_up)
        except (ServiceError, MlsError, CommitFailedError) as error:
            # One group's trouble must not stop the user's command or the
            # other groups; it is tried again on the next operation.
            _log.warning("could not bring %s up to date (%s)", group.name, type(error).__name__)


async def _settle_group(session: Session, group: GroupRow, held: bool, *, caught_up: bool) -> None:
    if held and caught_up and group.confirm_epoch is not None:
        group = _healing.confirm_join(session, group)
    if group.needs_rejoin or not held:
        await _rejoin(session, group)
        return
    if group.wrong_group_info is not None:
        await _healing.replace_group_info(session, group)
    pending = session.mls.has_pending_proposals(group.group_id)
    if group.status is GroupStatus.ACTIVE:
        if pending:
            await _commit(
                session,
                group.group_id,
                _proposals_maker(session, group.group_id),
                commits_proposals=True,
            )
        if _departed(session, group.group_id):
            # Accounts the server said were deleted: their leaves go with our
            # next commit, so that nothing is encrypted to them any more.
            await _commit(session, group.group_id, _departed_maker(session, group.group_id))
    elif group.status in (GroupStatus.LEAVING, GroupStatus.DECLINED) and not pending:
        await propose_leave(session, group.group_id)


def _departed(session: Session, group_id: bytes) -> list[bytes]:
    """Members of the group whose account was deleted (never us)."""
    deleted = session.store.deleted_people()
    if not deleted:
        return []
    return [k for k in session.mls.members(group_id) if k in deleted and k != session.me]


def _departed_maker(session: Session, group_id: bytes) -> BundleMaker:
    def make() -> CommitBundle | None:
        # Made from the group as it is now: another member may have removed them.
        todo = _departed(session, group_id)
        return session.mls.remove_members(group_id, todo) if todo else None

    return make


async def _rejoin(session: Session, group: GroupRow) -> None:
    """Catch up with a group by external commit from the GroupInfo the server serves.

    A rejoin that loses its epoch to another commit is tried again after a
    short random pause (members healing at once would otherwise collide
    again), :data:`MAX_COMMIT_ATTEMPTS` times at most.
    """
    for attempt in range(MAX_COMMIT_ATTEMPTS):
        current = session.store.group_by_id(group.group_id)
        if current is None or current.status not in _SETTLED:
            return  # gone meanwhile (the server told us we are out)
        if await _rejoin_attempt(session, current, attempt):
            return
    raise CommitFailedError(f"could not rejoin {group.name!r}: the group kept changing")


async def _rejoin_attempt(session: Session, group: GroupRow, attempt: int) -> bool:
    """One external commit from what the server serves (RFC 9420 §12.4.3.2, the
    resync that removes our old leaf, or for a new device of our account, a
    restored backup, the join that adds its leaf); True once merged.

    Raises:
        CommitFailedError: the server's GroupInfo is not of this group and epoch.
    """
    if attempt:
        pause = min(REJOIN_BACKOFF_MAX_SECONDS, REJOIN_BACKOFF_SECONDS * 2**attempt)
        await asyncio.sleep(random.uniform(0, pause))  # noqa: S311 - jitter, not a secret
    gid = group.group_id
    try:
        snapshot = await session.conn.fetch_group_info(gid)
    except (ForbiddenError, NotFoundError):
        # No longer a member (or the group is gone): nothing to rejoin.
        last = session.mls.epoch(gid) if gid in session.mls.group_ids() else 0
        session.persist(lambda tx: _gone(tx, group, last))
        return False
    # Before committing to it: the GroupInfo must be this group's at the
    # epoch the server says it is at (a joiner cannot check more of it).
    try:
        facts = group_info_facts(snapshot.group_info)
    except (MlsError, UnsupportedCiphersuiteError):
        facts = None
    if facts is None or facts.group_id != gid or facts.epoch != snapshot.epoch:
        _log.warning("the server served a GroupInfo that is not %s's; not rejoining", group.name)
        raise CommitFailedError(
            f"could not rejoin {group.name!r}: the server's GroupInfo is not the group's"
        )
    bundle = session.mls.rejoin(gid, snapshot.group_info, snapshot.ratchet_tree)
    # Whatever commit of ours waited, the rejoin replaces the state it was made on.
    stale = tuple(
        row.id
        for row in session.store.outbox()
        if row.group_id == gid
        and row.kind is OutboxKind.COMMIT
        and row.state is OutboxState.PENDING
        and row.id not in session.sending
    )
    row_id = _persist_commit(session, bundle, drop=stale)
    if await _publish_commit(session, _outbox_row(session, row_id)) is None:
        return False
    if group.status is not GroupStatus.DECLINED:
        session.persist(
            lambda tx: tx.add_history(gid, "event", "you rejoined; you are up to date", sender=None)
        )
    return True


def _gone(tx: Transaction, group: GroupRow, last_epoch: int) -> None:
    if group.status is GroupStatus.DECLINED:
        tx.forget_group(group.group_id)
    else:
        tx.set_group_status(group.group_id, GroupStatus.REMOVED)
    tx.end_group(group.group_id, last_epoch)
