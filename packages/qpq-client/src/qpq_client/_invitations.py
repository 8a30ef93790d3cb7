"""Invitations: a Welcome joined, held as a request, or refused (docs/security.md).

A Welcome from a contact (or from anyone, under the ``anyone`` policy) is
joined; any other is inspected without keeping anything and held as a
request, and the messages of that group are held with it until the user
accepts or declines (:mod:`qpq_client._requests`). A Welcome from a blocked
identity is dropped unopened, and one a blocked identity signed is dropped
once opened. The inviter is who signed the Welcome's GroupInfo, as MLS
proves it (RFC 9420 §12.4.3.1), whoever delivered it.

A Welcome never revives a group, and the server cannot open one, so the
client checks each before it keeps anything of it:

- a Welcome is processed once: its digest is kept (whatever came of it),
  and a copy is dropped;
- it must be for the group the server delivered it for
  (``Envelope.group_id``, the group whose accepted commit added us);
- a group id we are in already is not joined again, and one we left or were
  removed from only above the last epoch we held there;
- before we join for real (at once for a contact, on ``accept`` for a
  request), the joined state must match what the server serves for that
  group id: we are a member there, and at the same epoch the GroupContext
  is the same (so the commit that made it is the one the server accepted);
  a later epoch there is accepted, and once caught up we must have reached
  it (:func:`qpq_client._commits.settle`), else we rejoin;
- a new membership of a group id we were in before is a new entry with its
  own history: the old entry stays as it was, archived apart.

Each refusal is one warning line and the Welcome is acknowledged; nothing
else of it is kept. A join that used our last-resort KeyPackage (whose keys
it deleted, so that a replay cannot join) uploads a new one at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from qpq_client import _request_bounds
from qpq_client._keys import ensure_key_packages
from qpq_client._rows import GroupRow, GroupStatus
from qpq_client._session import OUR_FAILURES, Finish, Session
from qpq_client._state import StateStore, Transaction
from qpq_client._trust import is_trusted_inviter
from qpq_core import (
    CommitConflictError,
    Joined,
    MlsError,
    UnsupportedCiphersuiteError,
    group_info_facts,
)
from qpq_proto import Envelope
from qpq_proto.errors import ForbiddenError, NotFoundError

__all__ = [
    "LINKED_GROUPS_SETTING",
    "LINKED_HISTORY_SETTING",
    "ServerView",
    "against_server",
    "join_written",
    "linked_group_name",
    "refill_keys",
    "welcome",
]

_log = logging.getLogger("qpq_client")


async def welcome(session: Session, envelope: Envelope, finish: Finish) -> None:
    """Join the group a Welcome describes, hold it as a request, or refuse it."""
    store = session.store
    digest = hashlib.sha256(envelope.payload).digest()
    if store.welcome_seen(digest):
        _log.warning(
            "an invitation from %s was delivered again; ignored",
            session.display_name(envelope.sender),
        )
        session.persist(finish)
        return
    finish = _and_welcome_seen(finish, digest)
    if _blocked(store, envelope.sender):
        session.persist(finish)  # nothing from a blocked identity, invitations least of all
        return
    try:
        joined = session.mls.join_from_welcome(envelope.payload)
    except CommitConflictError:
        # OpenMLS holds a group with that id (we are in it), and a Welcome
        # never replaces a group we hold.
        _refuse(session, envelope.sender, "to a group you are in already", finish)
        return
    inviter = joined.inviter
    if inviter != envelope.sender:
        signer = await session.name_of(inviter)
        _log.warning(
            "the server said %s sent an invitation that %s signed; it counts as %s's",
            await session.name_of(envelope.sender),
            signer,
            signer,
        )
    view: ServerView | str | None = None
    refusal = _refusal(store, envelope, joined)
    session.learn_devices((joined.group_id,))
    inviter_account = session.account_of(inviter)
    if refusal is None and not _blocked(store, inviter_account):
        # Groups are made of accounts: a device of ours (adding us after we
        # were linked) is trusted, and a person counts by their account key.
        trusted = inviter_account == session.account or is_trusted_inviter(
            store, inviter_account, tuple(session.account_of(m) for m in joined.members)
        )
        view = await against_server(session, joined) if trusted else None
        refusal = view if isinstance(view, str) else None
    if refusal is not None:
        session.mls.reload(store.mls_rows())
        _refuse(session, inviter, refusal, finish)
    elif _blocked(store, inviter_account):
        session.mls.reload(store.mls_rows())
        session.persist(finish)
    elif not isinstance(view, ServerView):
        # Inspected, not kept: the store is the truth, so the KeyPackage the
        # join consumed is back for when the user accepts (docs/mls.md).
        session.mls.reload(store.mls_rows())
        await _request(session, inviter, envelope.payload, joined.group_id, finish)
    else:
        await _join(session, inviter, joined, view, finish)
    # The server handed out one of our KeyPackages for this Welcome: top up,
    # and replace the last-resort one if the join used (and deleted) it.
    await refill_keys(session, last_resort=isinstance(view, ServerView) and joined.last_resort)


def _and_welcome_seen(finish: Finish, digest: bytes) -> Finish:
    def write(tx: Transaction) -> None:
        tx.add_welcome(digest)
        finish(tx)

    return write


#: The setting a linked device keeps its account's group names in (JSON).
LINKED_GROUPS_SETTING = "linked_groups"
#: The past lines a linked device was handed (``--with-history``), by group,
#: until it joins each group (JSON).
LINKED_HISTORY_SETTING = "linked_history"


def linked_group_name(store: StateStore, group_id: bytes) -> str | None:
    """The name our account gave a group, handed over when this device was linked."""
    stored = store.setting(LINKED_GROUPS_SETTING)
    if not stored:
        return None
    name = json.loads(stored).get(group_id.hex())
    return name if isinstance(name, str) and name else None


def _write_linked_history(store: StateStore, tx: Transaction, group_id: bytes) -> None:
    """The group's past lines our account handed this device, as read already."""
    stored = store.setting(LINKED_HISTORY_SETTING)
    if not stored:
        return
    past = json.loads(stored)
    for kind, sender, body, sent_at in past.pop(group_id.hex(), []):
        tx.add_history(
            group_id,
            str(kind),
            str(body),
            sender=bytes.fromhex(sender) or None,
            sent_at=int(sent_at),
            shown=True,
        )
    tx.set_setting(LINKED_HISTORY_SETTING, json.dumps(past))


def _blocked(store: StateStore, identity_key: bytes) -> bool:
    person = store.person(identity_key)
    return person is not None and person.blocked


def _refuse(session: Session, inviter: bytes, what: str, finish: Finish) -> None:
    """One line for a refused invitation; it is acknowledged, nothing else kept."""
    _log.warning("an invitation from %s %s; ignored", session.display_name(inviter), what)
    session.persist(finish)


def _refusal(store: StateStore, envelope: Envelope, joined: Joined) -> str | None:
    """Why a Welcome cannot be taken, from what we hold (no network), or None."""
    group_id = joined.group_id
    if envelope.group_id and envelope.group_id != group_id:
        return "for another group than the one the server delivered it for"
    existing = store.group_by_id(group_id)
    if existing is not None and existing.status in (
        GroupStatus.ACTIVE,
        GroupStatus.LEAVING,
        GroupStatus.DECLINED,
    ):
        return "to a group you are in already"
    ended = store.ended_epoch(group_id)
    if ended is not None and joined.epoch <= ended:
        how = "were removed from" if _removed(existing) else "left"
        return f"to a group you {how} was delivered again"
    return None


def _removed(group: GroupRow | None) -> bool:
    return group is not None and group.status is GroupStatus.REMOVED


@dataclass(frozen=True, slots=True)
class ServerView:
    """What the server's state says about a group we are joining.

    Attributes:
        confirm_epoch: the server's epoch, when it is past the joined one
            (we must reach it once caught up).
        wrong_group_info: at the same epoch, the GroupInfo it serves has
            another ``external_pub`` than ours (we send it ours).
    """

    confirm_epoch: int | None = None
    wrong_group_info: bool = False


async def against_server(session: Session, joined: Joined) -> ServerView | str:
    """Compare a joined state with what the server serves for its group id.

    Returns the view, or why the join is refused. A network failure is
    raised (the Welcome stays queued).
    """
    try:
        snapshot = await session.conn.fetch_group_info(joined.group_id)
    except (ForbiddenError, NotFoundError):
        return "to a group the server does not list you in"
    if snapshot.epoch > joined.epoch:
        # Later commits are in our queue after the Welcome; each must follow
        # from the joined state, or we rejoin (settle, once caught up).
        return ServerView(confirm_epoch=snapshot.epoch)
    if snapshot.epoch < joined.epoch:
        return "to an epoch the group on the server never reached"
    try:
        served = group_info_facts(snapshot.group_info)
    except (MlsError, UnsupportedCiphersuiteError):
        return "to a group whose state on the server cannot be read"
    own = joined.facts
    if (served.group_id, served.epoch, served.context_hash) != (
        own.group_id,
        own.epoch,
        own.context_hash,
    ):
        return "that does not match the group the server holds"
    return ServerView(wrong_group_info=served.digest != own.digest)


async def refill_keys(session: Session, *, last_resort: bool) -> None:
    """Top up KeyPackages after a join (``last_resort``: it used ours, upload a new one).

    A failure here is not the message's: the next connection refills.
    """
    try:
        await ensure_key_packages(session, new_last_resort=last_resort)
    except OUR_FAILURES as error:
        _log.warning("could not refill KeyPackages now (%s)", type(error).__name__)


def join_written(
    tx: Transaction,
    existing: GroupRow | None,
    joined: Joined,
    view: ServerView,
    name: str,
    *,
    keep_held: bool = False,
) -> None:
    """The rows of a join: a new entry (an ended one archived apart, as it was),
    or the requested one made active, its request dropped and, unless
    ``keep_held`` (accepting it: they are processed next), its held
    messages with it; what the server check left to do."""
    group_id = joined.group_id
    tx.apply_changes(joined.changes)
    if existing is not None and existing.status in (GroupStatus.LEFT, GroupStatus.REMOVED):
        tx.archive_group(group_id)
        existing = None
    if existing is None:
        tx.add_group(group_id, name, named=False)
    else:
        tx.set_group_status(group_id, GroupStatus.ACTIVE)
        tx.set_needs_rejoin(group_id, False)
        tx.delete_request(group_id)
        if not keep_held:
            tx.delete_held(group_id)  # joined from a newer Welcome: they are from before it
    tx.set_confirm_epoch(group_id, view.confirm_epoch)
    if view.wrong_group_info:
        tx.set_wrong_group_info(group_id, joined.epoch)
    tx.mark_contacts(joined.members)


async def _join(
    session: Session, inviter: bytes, joined: Joined, view: ServerView, finish: Finish
) -> None:
    store = session.store
    inviter_name = (await session.names_of((inviter, *joined.members)))[inviter]
    existing = store.group_by_id(joined.group_id)
    # A group our account was in when this device was linked keeps its name.
    given = linked_group_name(store, joined.group_id)
    name = store.unique_group_name(given or f"group-{joined.group_id.hex()[:8]}")

    def write(tx: Transaction) -> None:
        join_written(tx, existing, joined, view, name)
        _write_linked_history(store, tx, joined.group_id)
        tx.add_history(
            joined.group_id, "event", f"you joined (invited by {inviter_name})", sender=inviter
        )
        finish(tx)

    session.persist(write)


async def _request(
    session: Session, inviter: bytes, welcome: bytes, group_id: bytes, finish: Finish
) -> None:
    store = session.store
    if not _request_bounds.admits(store, group_id, welcome):
        _request_bounds.refuse(session, inviter, finish)
        return
    inviter_name = await session.name_of(inviter)
    existing = store.group_by_id(group_id)
    ended = existing is not None and existing.status in (GroupStatus.LEFT, GroupStatus.REMOVED)
    name = (
        existing.name
        if existing is not None and not ended
        else store.unique_group_name(f"group-{group_id.hex()[:8]}")
    )
    _log.info("%s invited you to %s; it waits for your decision", inviter_name, name)

    def write(tx: Transaction) -> None:
        if ended:
            tx.archive_group(group_id)  # the old membership stays as it was
        if existing is None or ended:
            tx.add_group(group_id, name, named=False)
        tx.set_group_status(group_id, GroupStatus.REQUESTED)
        tx.set_needs_rejoin(group_id, False)
        tx.add_request(group_id, inviter, welcome)
        tx.add_history(group_id, "request", f"{inviter_name} invited you to {name}", sender=inviter)
        finish(tx)

    session.persist(write)
