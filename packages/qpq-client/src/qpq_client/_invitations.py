"""Invitations: a Welcome joined, held as a request, or dropped (docs/security.md).

A Welcome from a contact (or from anyone, under the ``anyone`` policy) is
joined; any other is inspected without keeping anything and held as a
request, and the messages of that group are held with it until the user
accepts or declines (:mod:`qpq_client._requests`). A Welcome from a blocked
identity is dropped unopened, and one a blocked identity signed is dropped
once opened. The inviter is who signed the Welcome's GroupInfo, as MLS
proves it (RFC 9420 §12.4.3.1), whoever delivered it.
"""

from __future__ import annotations

import logging

from qpq_client import _request_bounds
from qpq_client._keys import ensure_key_packages
from qpq_client._rows import GroupStatus
from qpq_client._session import OUR_FAILURES, Finish, Session
from qpq_client._state import StateStore, Transaction
from qpq_client._trust import is_trusted_inviter
from qpq_core import Joined
from qpq_proto import Envelope

__all__ = ["welcome"]

_log = logging.getLogger("qpq_client")


async def welcome(session: Session, envelope: Envelope, finish: Finish) -> None:
    """Join the group a Welcome describes, or hold it as a request (docs/security.md).

    The inviter is the member who signed the Welcome's GroupInfo, as MLS
    proves it; the server's word (the envelope's sender) only decides what
    to drop unopened.
    """
    store = session.store
    if _blocked(store, envelope.sender):
        session.persist(finish)  # nothing from a blocked identity, invitations least of all
        return
    joined = session.mls.join_from_welcome(envelope.payload)
    inviter = joined.inviter
    if inviter != envelope.sender:
        signer = await session.name_of(inviter)
        _log.warning(
            "the server said %s sent an invitation that %s signed; it counts as %s's",
            await session.name_of(envelope.sender),
            signer,
            signer,
        )
    if _blocked(store, inviter) or not is_trusted_inviter(store, inviter, joined.members):
        # Inspected, not kept: the store is the truth, so the KeyPackage the
        # join consumed is back for when the user accepts (docs/mls.md).
        session.mls.reload(store.mls_rows())
        if _blocked(store, inviter):
            session.persist(finish)
        else:
            await _request(session, inviter, envelope.payload, joined.group_id, finish)
    else:
        await _join(session, inviter, joined, finish)
    # The Welcome consumed one of our KeyPackages on the server: top up (a
    # failure here is not the message's; the next connection refills).
    try:
        await ensure_key_packages(session)
    except OUR_FAILURES as error:
        _log.warning("could not refill KeyPackages now (%s)", type(error).__name__)


def _blocked(store: StateStore, identity_key: bytes) -> bool:
    person = store.person(identity_key)
    return person is not None and person.blocked


async def _join(session: Session, inviter: bytes, joined: Joined, finish: Finish) -> None:
    store = session.store
    inviter_name = (await session.names_of((inviter, *joined.members)))[inviter]
    existing = store.group_by_id(joined.group_id)
    name = store.unique_group_name(f"group-{joined.group_id.hex()[:8]}")

    def write(tx: Transaction) -> None:
        tx.apply_changes(joined.changes)
        if existing is None:
            tx.add_group(joined.group_id, name, named=False)
        else:
            tx.set_group_status(joined.group_id, GroupStatus.ACTIVE)
            tx.set_needs_rejoin(joined.group_id, False)
            tx.delete_request(joined.group_id)  # joined from a newer Welcome
            tx.delete_held(joined.group_id)
        tx.mark_contacts(joined.members)
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
    name = existing.name if existing else store.unique_group_name(f"group-{group_id.hex()[:8]}")
    _log.info("%s invited you to %s; it waits for your decision", inviter_name, name)

    def write(tx: Transaction) -> None:
        if existing is None:
            tx.add_group(group_id, name, named=False)
        tx.set_group_status(group_id, GroupStatus.REQUESTED)
        tx.set_needs_rejoin(group_id, False)
        tx.add_request(group_id, inviter, welcome)
        tx.add_history(group_id, "request", f"{inviter_name} invited you to {name}", sender=inviter)
        finish(tx)

    session.persist(write)
