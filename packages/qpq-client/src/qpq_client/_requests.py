"""Invitations held as requests, and the user's decision on them.

Under the ``contacts`` invite policy (the default), a Welcome from someone
who is not a contact was inspected without keeping anything and held, with
every message of its group that arrived since (already acknowledged), as
Signal and WhatsApp hold message requests (:mod:`qpq_client._receive`).

Accepting joins from the held Welcome, then processes the held messages in
the order they arrived. Declining keeps none of it, but must still join
once: until a member commits our removal we stay in the group's roster,
the others keep encrypting to us and the server keeps queueing for us, and
only a member can propose a removal the others accept. So declining joins,
processes what was held without showing any of it, and proposes our leave;
the others see us leave. The group is forgotten once the removal arrives
(or at once, when nobody else is left in it or the Welcome no longer
opens).

Either way the joined state is first compared with what the server serves
for that group id (:func:`qpq_client._invitations.against_server`): an
invitation that does not match is dropped (accepting it raises
:class:`~qpq_client.InvalidInvitationError`), and nothing of it is kept.
"""

from __future__ import annotations

import logging

from qpq_client import _commits, _receive
from qpq_client._errors import InvalidInvitationError, NoInvitationError
from qpq_client._invitations import ServerView, against_server, join_written, refill_keys
from qpq_client._plaintext import encode_declined
from qpq_client._rows import GroupRow, GroupStatus, RequestRow
from qpq_client._sending import send_application
from qpq_client._session import Session
from qpq_client._state import Transaction
from qpq_core import Joined, MlsError

__all__ = ["accept", "decline"]

_log = logging.getLogger("qpq_client")


def _requested(session: Session, name: str) -> tuple[GroupRow, RequestRow]:
    group = session.store.group_by_name(name)
    request = session.store.request(group.group_id) if group is not None else None
    if group is None or group.status is not GroupStatus.REQUESTED or request is None:
        raise NoInvitationError(
            f"no invitation waits under the name {name!r} (see `qpq group list`)"
        )
    return group, request


async def accept(session: Session, name: str) -> GroupRow:
    """Join the group of a held invitation and process its held messages; returns the group.

    Raises:
        NoInvitationError: no invitation waits under that name.
        InvalidInvitationError: the invitation does not match what the
            server holds for its group; it was dropped.
    """
    group, request = _requested(session, name)
    joined = session.mls.join_from_welcome(request.welcome)
    view = await _checked(session, group, joined)
    if view is None:
        raise InvalidInvitationError(
            f"the invitation to {name!r} does not match the group the server holds; it was dropped"
        )
    inviter = (await session.names_of((request.inviter, *joined.members)))[request.inviter]

    def write(tx: Transaction) -> None:
        join_written(tx, group, joined, view, group.name, keep_held=True)
        tx.add_history(
            group.group_id, "event", f"you joined (invited by {inviter})", sender=request.inviter
        )
        if request.dropped:
            tx.add_history(
                group.group_id,
                "event",
                f"{request.dropped} messages sent before you accepted were not kept"
                " (more than an invitation holds)",
                sender=None,
            )

    session.persist(write)
    if joined.last_resort:
        await refill_keys(session, last_resort=True)
    for row in session.store.held(group.group_id):
        await _receive.process_held(session, row)
    return session.store.group_by_id(group.group_id) or group


async def _checked(session: Session, group: GroupRow, joined: Joined) -> ServerView | None:
    """The server's view of a group joined from a held Welcome; None (the
    invitation dropped, one line) when the two do not match."""
    view = await against_server(session, joined)
    if isinstance(view, ServerView) and joined.group_id == group.group_id:
        return view
    session.mls.reload(session.store.mls_rows())
    _log.warning("the invitation to %s was dropped: it does not match the server's", group.name)
    session.persist(lambda tx: tx.forget_group(group.group_id))
    return None


async def decline(session: Session, name: str) -> None:
    """Decline a held invitation: nothing of it is kept, and we leave the group's roster."""
    group, request = _requested(session, name)
    try:
        joined = session.mls.join_from_welcome(request.welcome)
    except MlsError:
        # The Welcome no longer opens (say, its KeyPackage expired): there is
        # no group to leave, so there is nothing but the request to drop.
        session.mls.reload(session.store.mls_rows())
        session.persist(lambda tx: tx.forget_group(group.group_id))
        return
    if await _checked(session, group, joined) is None:
        return  # not the server's group: nobody there to leave

    def write(tx: Transaction) -> None:
        tx.apply_changes(joined.changes)
        tx.set_group_status(group.group_id, GroupStatus.DECLINED)
        tx.delete_request(group.group_id)
        tx.clear_history(group.group_id)

    session.persist(write)
    for row in session.store.held(group.group_id):
        await _receive.process_held(session, row)
    # What was held may have ended it already (our removal), or left us
    # behind (settle rejoins first; the leave follows on the next settle).
    now = session.store.group_by_id(group.group_id)
    if now is not None and now.status is GroupStatus.DECLINED and not now.needs_rejoin:
        # Said first, so that the members read "declined", not "left"; both
        # go through the outbox, in this order, should the server be away.
        await send_application(session, group.group_id, encode_declined())
        await _commits.propose_leave(session, group.group_id)
