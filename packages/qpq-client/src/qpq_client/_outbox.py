"""The outbox: what waits to be handed to the server, and what becomes of it.

Everything the client sends is persisted first (an outbox row), so that a
crash cannot lose it or reuse a ratchet key (docs/mls.md). The next
operation hands over what a previous one could not. That must never wedge
a profile: a 6 MB text the server refused used to stay in the outbox, and
every later command failed with the server's refusal. So:

- a row the server refuses for good (:data:`REFUSED_FOR_GOOD`: too large,
  invalid, forbidden, not found) is dropped and reported, a history event
  "your message to X could not be sent: ..." for a message;
- a row the server cannot take now (:data:`TRY_LATER`: rate limit,
  unavailable, quota, its own failure) waits for the next operation, which
  goes on meanwhile;
- the user sees what waits (``qpq outbox``, ``Client.outbox()``) and may
  drop it (``qpq outbox drop ID``, ``Client.drop_outbox(id)``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from qpq_client._errors import UnknownOutboxEntryError
from qpq_client._rows import OutboxKind, OutboxRow, OutboxState
from qpq_client._state import StateStore, Transaction
from qpq_client._views import OutboxEntry
from qpq_core import MlsClient
from qpq_proto.errors import (
    BadVersionError,
    ForbiddenError,
    InternalError,
    InvalidArgumentError,
    MalformedRequestError,
    NotFoundError,
    PayloadTooLargeError,
    QueueFullError,
    QuotaExceededError,
    RateLimitedError,
    ServiceError,
    UnavailableError,
    UnsupportedCallError,
    UnsupportedCiphersuiteError,
)

__all__ = [
    "REFUSED_FOR_GOOD",
    "TRY_LATER",
    "attempt",
    "drop",
    "entries",
    "unsent_line",
]

_log = logging.getLogger("qpq_client")

#: What the server answers the same however often a row is sent again.
REFUSED_FOR_GOOD: tuple[type[ServiceError], ...] = (
    PayloadTooLargeError,
    InvalidArgumentError,
    ForbiddenError,
    NotFoundError,
    UnsupportedCiphersuiteError,
    MalformedRequestError,
    BadVersionError,
    UnsupportedCallError,
)
#: What the server may take later: the row waits.
TRY_LATER: tuple[type[ServiceError], ...] = (
    RateLimitedError,
    UnavailableError,
    QuotaExceededError,
    QueueFullError,
    InternalError,
)

#: What each kind of row is, in a person's words.
_KINDS = {
    OutboxKind.APPLICATION: "message",
    OutboxKind.PROPOSAL: "leave",
    OutboxKind.COMMIT: "group change",
    OutboxKind.GROUP: "new group",
}


async def attempt(work: Awaitable[None]) -> bool:
    """Hand one row over; False when the server cannot take it now (the rest
    then waits too, in its order).

    A row refused for good was dropped by whoever tried it (and reported):
    logged here, and the outbox goes on.
    """
    try:
        await work
    except REFUSED_FOR_GOOD as refused:
        _log.warning("the server refused something that waited in the outbox: %s", refused)
    except TRY_LATER as later:
        _log.warning("the server cannot take what waits in the outbox now (%s); it waits", later)
        return False
    return True


def unsent_line(store: StateStore, group_id: bytes, reason: str) -> str:
    """The history event for a message that was dropped unsent."""
    group = store.group_by_id(group_id)
    name = group.name if group is not None else group_id.hex()[:8]
    return f"your message to {name} could not be sent: {reason}"


def entries(store: StateStore) -> list[OutboxEntry]:
    """What waits in the outbox, oldest first."""
    return [_entry(store, row) for row in store.outbox()]


def _entry(store: StateStore, row: OutboxRow) -> OutboxEntry:
    group = store.group_by_id(row.group_id)
    kind = _KINDS[row.kind]
    if row.kind is OutboxKind.COMMIT and row.state is OutboxState.MERGED:
        kind = "group name"  # accepted; its name is still to tell the new members
    return OutboxEntry(
        id=row.id,
        group=group.name if group is not None else row.group_id.hex()[:8],
        kind=kind,
        created_at_ms=row.created_at,
        size=len(row.payload) + len(row.welcome or b"") + len(row.group_info or b""),
    )


def drop(
    store: StateStore,
    mls: MlsClient,
    outbox_id: int,
    persist: Callable[[Callable[[Transaction], None]], None],
) -> OutboxEntry:
    """Remove an outbox row the user gave up on; returns what it was.

    A message is not sent (its history line gets an event saying so); a
    group change is not made (our pending commit is cleared); a new group
    that never reached the server is forgotten. A leave cannot be taken
    back: another member may have it already.

    Raises:
        UnknownOutboxEntryError: no such row, or one that cannot be dropped.
    """
    row = next((r for r in store.outbox() if r.id == outbox_id), None)
    if row is None:
        raise UnknownOutboxEntryError(f"nothing waits in the outbox as {outbox_id} (qpq outbox)")
    if row.kind is OutboxKind.PROPOSAL:
        raise UnknownOutboxEntryError(
            f"{outbox_id} is a leave: it cannot be taken back (it is sent with the next command)"
        )
    entry = _entry(store, row)
    cleared = (
        mls.clear_pending_commit(row.group_id).changes
        if row.kind is OutboxKind.COMMIT and row.state is OutboxState.PENDING
        else ()
    )

    def write(tx: Transaction) -> None:
        tx.apply_changes(cleared)
        tx.delete_outbox(row.id)
        if row.kind is OutboxKind.GROUP:
            tx.forget_group(row.group_id)
        elif row.kind is OutboxKind.APPLICATION:
            line = unsent_line(store, row.group_id, "you dropped it from the outbox")
            tx.add_history(row.group_id, "event", line, sender=None)

    persist(write)
    return entry
