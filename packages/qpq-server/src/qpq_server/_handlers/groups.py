"""Groups: creation, verified publishes fanned out by the roster, and what a rejoin needs.

The server keeps each group's public MLS state and checks every handshake
message against it (RFC 9750's strongly consistent delivery service):

- a proposal or commit must be an MLS PublicMessage signed by a current
  member (the proven identity of the publisher) for the group's current
  epoch, allowed by the commit policy, and a commit must bring the GroupInfo
  of the epoch it creates; one commit per epoch is accepted, and the state
  advances in the same transaction as the fan-out;
- an application message (PrivateMessage) is accepted only from a current
  member and goes to every other member;
- recipients always come from the verified roster, never from the sender;
  a commit's Welcome goes only to the identities it adds;
- a registered device of an account that has a device in the group may
  fetch its GroupInfo and join it by external commit (a restored backup,
  docs/protocol.md §7.2): the policy lets that commit add only its own
  leaf, and a removed device's is refused where the commit is stored.

A commit for an epoch that already has one is refused with the winning
commit's hash, so a client learns whether its own commit won (a retry after
a lost answer) without trusting anything else; the same commit sent again
is answered as accepted, and delivered once.

Each change is verified against the group's state at the version the
storage holds (another node may have stored a proposal since this node
cached it), and stored only while the group is still at that version. A
change that lost that race to a proposal stored through another node (the
epoch is unchanged) is verified again against the state that now includes
the proposal, so two proposals sent at once through two nodes are both
stored; a change that lost to a commit is refused as any late commit is.

The GroupInfo served for rejoins is the committer's, and its
``external_pub`` is the one thing about it the server cannot check. Each
commit's envelope carries the digest of the GroupInfo accepted with it;
a member whose own view of the epoch differs sends its own
(``ReplaceGroupInfo``), which replaces the served one once it is checked
as far as the server can: the current epoch, the member's own leaf, the
epoch's group context and confirmation tag (docs/protocol.md, 7.1).
"""

from __future__ import annotations

import asyncio
import hashlib
import math

from qpq_core import CommitVerified, DeliveryGroup, MessageInfo, ProposalVerified
from qpq_proto import (
    CreateGroup,
    Done,
    FetchGroupInfo,
    GroupSnapshot,
    Publish,
    Published,
    ReplaceGroupInfo,
)
from qpq_proto import MessageKind as Kind
from qpq_proto.errors import (
    EpochConflictError,
    ForbiddenError,
    InvalidArgumentError,
    NotFoundError,
)
from qpq_server._accounts import StrangerLimit
from qpq_server._context import App, CallContext
from qpq_server._logging import get_logger, short_key
from qpq_server._mls import (
    MAX_PAST_EPOCHS,
    check_group_info,
    group_info_digest,
    peek_message,
    register_group,
    verify,
)
from qpq_server._storage import Delivered, Delivery, GroupUpdate, GroupVersion

__all__ = [
    "RECIPIENTS_PER_TOKEN",
    "create_group",
    "fetch_group_info",
    "publish",
    "replace_group_info",
]

_log = get_logger("groups")

#: Queue entries a fan-out writes for one rate-limit token.
RECIPIENTS_PER_TOKEN = 100
_DAY_S = 24 * 3600
#: SQLite integers are signed 64-bit; larger epochs cannot be stored.
_MAX_STORED_INT = 2**63 - 1
#: What each kind of group message must travel as (RFC 9420 §6).
_WIRE_FORMAT = {Kind.APPLICATION: "private", Kind.PROPOSAL: "public", Kind.COMMIT: "public"}
#: Verifications of one proposal or commit while other nodes store proposals
#: to its group meanwhile; the last conflict is then answered.
_VERIFY_ATTEMPTS = 4


def _delivery(app: App, sender: bytes, payload: bytes, account: bytes) -> Delivery:
    now_ms = app.clock.wall_ms()
    return Delivery(
        sender=sender,
        payload=payload,
        now_ms=now_ms,
        expires_ms=now_ms + app.limits.message_ttl_seconds * 1000,
        depth_cap=app.limits.queue_depth,
        share_cap=app.limits.queue_depth_per_sender,
        quota_bytes=app.config.quota_queued_bytes,
        account=account,
    )


def _strangers(app: App, account: bytes) -> StrangerLimit:
    per_day = app.config.invitations_to_strangers_per_day
    return StrangerLimit(account_key=account, burst=per_day, per_second=per_day / _DAY_S)


def _fan_out_tokens(recipients: int) -> int:
    # The call paid one token; a wide fan-out pays for its queue writes too.
    return max(0, math.ceil(recipients / RECIPIENTS_PER_TOKEN) - 1)


async def create_group(ctx: CallContext, call: CreateGroup) -> Done:
    creator = ctx.identity()
    account = ctx.account()
    app = ctx.app
    state, registered = await asyncio.to_thread(register_group, call.group_info)
    if registered.signer != creator or registered.members != (creator,):
        raise ForbiddenError(
            "a new group's GroupInfo must be signed by its creator, its only member",
            field="group_info",
        )
    if registered.epoch != 0:
        raise InvalidArgumentError("a new group starts at epoch 0", field="group_info")
    await app.storage.create_group(
        registered.group_id,
        # Counted per account (quota_groups_created), whichever identity made it.
        creator=account,
        epoch=registered.epoch,
        members=registered.members,
        state=registered.changes,
        group_info=call.group_info,
        now_ms=app.clock.wall_ms(),
        max_created=app.config.quota_groups_created,
    )
    app.groups.remember(registered.group_id, state, GroupVersion(registered.epoch, 0))
    return Done()


async def fetch_group_info(ctx: CallContext, call: FetchGroupInfo) -> GroupSnapshot:
    member = ctx.identity()
    app = ctx.app
    members = await app.storage.group_members(call.group_id)
    if members is None:
        raise NotFoundError("no such group", field="group_id")
    if member not in members and not await _account_in_group(ctx, members):
        raise ForbiddenError("only a member may fetch the group's GroupInfo")
    async with app.groups.locked(call.group_id):
        epoch, group_info, state = await _served_group_info(app, call.group_id)
        tree = await asyncio.to_thread(state.ratchet_tree)
    return GroupSnapshot(
        group_id=call.group_id, epoch=epoch, group_info=group_info, ratchet_tree=tree
    )


async def _served_group_info(app: App, group_id: bytes) -> tuple[int, bytes, DeliveryGroup]:
    """The GroupInfo served for the group and the group's state, of one epoch.

    Under the group's lock no commit lands through this node between the
    two reads, but one may through another node: then both are read again.
    """
    for _ in range(_VERIFY_ATTEMPTS):
        stored = await app.storage.group_info(group_id)
        if stored is None:
            raise NotFoundError("no such group", field="group_id")
        epoch, group_info = stored
        at, state = await app.groups.current(group_id)
        if at.epoch == epoch:
            return epoch, group_info, state
    raise EpochConflictError(
        "the group's epoch kept moving on while its GroupInfo was read; try again",
        field="group_id",
        epoch=at.epoch,
    )


async def replace_group_info(ctx: CallContext, call: ReplaceGroupInfo) -> Done:
    """Serve a current member's own GroupInfo for the epoch in place of the stored one."""
    member = ctx.identity()
    app = ctx.app
    members = await app.storage.group_members(call.group_id)
    if members is None:
        raise NotFoundError("no such group", field="group_id")
    if member not in members:
        raise ForbiddenError("only a member may replace the group's GroupInfo")
    async with app.groups.locked(call.group_id):
        epoch, served, state = await _served_group_info(app, call.group_id)
        facts = await asyncio.to_thread(check_group_info, state, call.group_info, member)
        if group_info_digest(served) == facts.digest:
            return Done()  # another member's replacement (or the committer's) says the same
        await app.storage.replace_group_info(call.group_id, epoch=epoch, group_info=call.group_info)
    app.metrics.group_info_replaced.inc()
    fields = {"group": short_key(call.group_id), "epoch": epoch, "member": short_key(member)}
    _log.info("GroupInfo replaced by a member", extra={"fields": fields})
    return Done()


def _check_framing(facts: MessageInfo, call: Publish) -> None:
    """The cleartext framing must say what the call says (RFC 9420 §6.2, §6.3)."""
    if facts.wire_format is None:  # a Welcome, KeyPackage or GroupInfo
        raise InvalidArgumentError("payload is not a group message", field="payload")
    # The declared kind (the wire's) and the framing's content type share their names.
    if facts.kind.name != call.kind.name:
        raise InvalidArgumentError("payload kind differs from the declared kind", field="kind")
    if facts.wire_format != _WIRE_FORMAT[call.kind]:
        raise InvalidArgumentError(
            "application messages travel as PrivateMessage, proposals and commits as PublicMessage",
            field="payload",
        )
    if facts.group_id != call.group_id:
        raise InvalidArgumentError(
            "payload group id differs from the declared group_id", field="group_id"
        )
    if facts.epoch != call.epoch:
        raise InvalidArgumentError("payload epoch differs from the declared epoch", field="epoch")


async def publish(ctx: CallContext, call: Publish) -> Published:
    sender = ctx.identity()
    account = ctx.account()
    app = ctx.app
    if call.epoch > _MAX_STORED_INT:
        raise InvalidArgumentError("epoch is out of range", field="epoch")
    _check_framing(peek_message(call.payload), call)
    # Every publish of the account's identities counts, whatever the node.
    await app.accounts.charge_message(account)
    delivery = _delivery(app, sender, call.payload, account)
    if call.kind is Kind.APPLICATION:
        # Readers are woken once it committed, even if this call is cancelled by then.
        epoch, delivered = await app.storage.send_application(
            call.group_id,
            epoch=call.epoch,
            oldest_epoch=MAX_PAST_EPOCHS,
            delivery=delivery,
            on_commit=app.notifier.delivered,
        )
        # Billed once delivered: refusing now would make the sender retry a
        # message that every member already has.
        await ctx.charge(_fan_out_tokens(len(delivered.seqs)), done=True)
        return Published(recipients=len(delivered.seqs), epoch=epoch)
    async with app.groups.locked(call.group_id):
        delivered, epoch = await _handshake(ctx, call, sender, delivery)
    return Published(recipients=len(delivered.seqs), epoch=epoch)


async def _handshake(
    ctx: CallContext, call: Publish, sender: bytes, delivery: Delivery
) -> tuple[Delivered, int]:
    """Verify a proposal or commit against the group's state; store and fan it out."""
    app = ctx.app
    paid: int | None = None
    attempt = 1
    while True:
        # The version comes with the state (another node may have stored a
        # change since any earlier read): the sender's epoch is checked against
        # the state the commit is verified on.
        head, state = await app.groups.current(call.group_id)
        before = state.members()
        answered = await _check_sender_and_epoch(ctx, call, sender, head.epoch, before)
        if answered is not None:
            return answered
        if paid is None:
            paid = _fan_out_tokens(len(before))
            await ctx.charge(paid)
        change = await asyncio.to_thread(verify, state, call.payload, call.group_info or None)
        added = change.added if isinstance(change, CommitVerified) else ()
        # A device of a member account that joined by itself (external
        # commit) has no Welcome; it is checked not to be revoked instead.
        joined = added if isinstance(change, CommitVerified) and change.external else ()
        if joined:
            added = ()
        try:
            _check_change(change, call, sender, app.limits.max_recipients)
            update = _update(call, change, head)
            delivered = await app.storage.apply_group_update(
                call.group_id,
                update,
                # A commit reaches everyone who was a member, the removed included,
                # so they learn they are out; joiners get the Welcome instead.
                recipients=tuple(m for m in before if m != sender),
                delivery=delivery,
                welcome=(call.welcome, added) if added else None,
                external_joiners=joined,
                strangers=_strangers(app, delivery.quota_key),
                on_commit=app.notifier.delivered,
            )
        except BaseException as error:
            # The in-memory state already took the change that was not stored.
            app.groups.forget(call.group_id)
            if (
                isinstance(error, EpochConflictError)
                and error.epoch == head.epoch
                and attempt < _VERIFY_ATTEMPTS
            ):
                # Only proposals were stored through other nodes since ``head``
                # (the epoch is unchanged): verify again against the state with them.
                attempt += 1
                continue
            raise
        app.groups.remember(call.group_id, state, update.version)
        # The Welcome went to every member the commit adds, a fan-out only known
        # once verified: billed like an application message's, after the fact.
        await ctx.charge(_fan_out_tokens(len(before) + len(added)) - paid, done=True)
        return delivered, change.epoch


async def _check_sender_and_epoch(
    ctx: CallContext, call: Publish, sender: bytes, current: int, before: tuple[bytes, ...]
) -> tuple[Delivered, int] | None:
    """Refuse a change that is not for the group's current epoch; None to go on.

    A commit that already won its epoch (its answer was lost) is answered
    as then: it is in every queue already, and nothing is delivered twice.
    """
    # Membership first: whoever is not in the group learns nothing about it
    # (neither its epoch nor its commits' hashes) from the answer.
    if sender not in before and not (
        call.kind is Kind.COMMIT and await _account_in_group(ctx, before)
    ):
        raise ForbiddenError("only a current member may change this group")
    if call.kind is Kind.COMMIT and call.epoch < current:
        accepted = await ctx.app.storage.accepted_commit(call.group_id, call.epoch)
        if accepted == hashlib.sha256(call.payload).digest():
            return Delivered(seqs={}, gaps=()), current
        raise EpochConflictError(
            f"another commit was accepted for epoch {call.epoch}; the group is at epoch {current}",
            field="epoch",
            accepted_commit=accepted or b"",
            epoch=current,
        )
    if call.epoch > current:
        raise InvalidArgumentError(
            f"the group is at epoch {current}, not {call.epoch}", field="epoch"
        )
    if call.epoch < current:
        raise EpochConflictError(f"the group is at epoch {current}", field="epoch", epoch=current)
    return None


async def _account_in_group(ctx: CallContext, members: tuple[bytes, ...]) -> bool:
    """Whether the caller, a registered device, is of an account that has a
    device in the group: it may fetch the GroupInfo and join by external
    commit (a restored backup, docs/protocol.md §7.2). What the commit does
    is checked by the policy (only its own leaf is added)."""
    try:
        devices = await ctx.app.storage.list_devices(ctx.account())
    except (NotFoundError, ForbiddenError):
        return False
    return any(device.device_key in members for device in devices)


def _update(
    call: Publish, change: ProposalVerified | CommitVerified, head: GroupVersion
) -> GroupUpdate:
    """What storing ``change``, verified against the group at ``head``, writes."""
    commit = change if isinstance(change, CommitVerified) else None
    return GroupUpdate(
        from_epoch=head.epoch,
        from_version=head.version,
        epoch=change.epoch,
        state=change.changes,
        members=commit.members if commit is not None else None,
        group_info=call.group_info if commit is not None else None,
        commit_hash=hashlib.sha256(call.payload).digest() if commit is not None else None,
        group_info_digest=commit.group_info_facts.digest if commit is not None else None,
    )


def _check_change(
    change: ProposalVerified | CommitVerified, call: Publish, sender: bytes, max_members: int
) -> None:
    members: tuple[bytes, ...] | None = None
    added: tuple[bytes, ...] = ()
    if isinstance(change, ProposalVerified):
        signer = change.sender
    else:
        signer, members = change.committer, change.members
        # The joiner of an external commit adds itself: no Welcome.
        added = () if change.external else change.added
    if signer != sender:
        raise ForbiddenError("the message is signed by another member than the publisher")
    if members is not None and len(members) > max_members:
        raise InvalidArgumentError(f"a group has at most {max_members} members", field="payload")
    if isinstance(change, CommitVerified) != (call.kind is Kind.COMMIT):
        raise InvalidArgumentError("payload kind differs from the declared kind", field="kind")
    if added and not call.welcome:
        raise InvalidArgumentError(
            "a commit that adds members needs their Welcome", field="welcome"
        )
    if call.welcome and not added:
        raise InvalidArgumentError("only a commit that adds members has a Welcome", field="welcome")
