"""What invitations from strangers may make this profile keep: a bounded amount.

An invitation from someone who is not a contact is held as a request, with
the messages of its group, until the user decides (:mod:`qpq_client._requests`).
Anyone holding the server's access token can send one, and then push
messages into that group: before these bounds two strangers grew a victim's
profile from 0.6 to 109 MiB that way. Now:

- at most :attr:`RequestLimits.max_requests` requests wait at once; an
  invitation beyond that is not held (nothing of it is kept, not even its
  inviter's name), and counted (:func:`dropped_requests`, shown by ``qpq
  group list``);
- a request holds at most :attr:`~RequestLimits.max_messages` messages and
  :attr:`~RequestLimits.max_message_bytes` of their payloads;
- everything held for requests together (Welcomes and held messages) stays
  within :attr:`~RequestLimits.max_total_bytes`.

A message over a request's bounds is acknowledged and counted as dropped
for that request (``GroupSummary.dropped``; accepting says how many were
lost). So what strangers send can grow a profile by about
``max_total_bytes`` plus the rows' own overhead: 4 MiB of payload and at
most 32 requests of 256 rows each, under 5 MiB in all, however much they push.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from qpq_client._session import Finish, Session
from qpq_client._state import StateStore, Transaction
from qpq_proto import Envelope

__all__ = [
    "REQUEST_LIMITS",
    "RequestLimits",
    "admits",
    "dropped_requests",
    "hold",
    "refuse",
]

_log = logging.getLogger("qpq_client")
_MIB = 1024 * 1024
#: The setting counting invitations that were not held.
DROPPED_SETTING = "requests_dropped"


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds on what invitations not yet accepted may hold (see the module docstring)."""

    max_requests: int = 32
    max_messages: int = 256
    max_message_bytes: int = 1 * _MIB
    max_total_bytes: int = 4 * _MIB


REQUEST_LIMITS = RequestLimits()


def admits(store: StateStore, group_id: bytes, welcome: bytes) -> bool:
    """Whether an invitation to ``group_id`` may be held as a request.

    A newer Welcome for a group already requested replaces the old one and
    what was held with it, so those do not count against it.
    """
    limits = REQUEST_LIMITS
    replacing = store.request(group_id) is not None
    waiting = store.request_count() - int(replacing)
    held = store.request_bytes(besides=group_id)
    return waiting < limits.max_requests and held + len(welcome) <= limits.max_total_bytes


def refuse(session: Session, inviter: bytes, finish: Finish) -> None:
    """Drop an invitation :func:`admits` refused: counted, logged, acknowledged."""
    who = session.display_name(inviter)  # no lookup: a stranger leaves no row behind
    _log.warning(
        "an invitation from %s was not kept: %d invitations already wait, or they hold all"
        " that invitations may (qpq group list; accept or decline some)",
        who,
        REQUEST_LIMITS.max_requests,
    )

    def write(tx: Transaction) -> None:
        tx.set_setting(DROPPED_SETTING, str(dropped_requests(session.store) + 1))
        finish(tx)

    session.persist(write)


def hold(tx: Transaction, store: StateStore, group_id: bytes, envelope: Envelope) -> bool:
    """Hold a message of a requested group, or count it as dropped; whether it was held.

    Reads in ``tx``'s transaction (the store's connection), so a batch's
    earlier messages count.
    """
    limits = REQUEST_LIMITS
    size = len(envelope.payload)
    count, held = store.held_usage(group_id)
    fits = (
        count < limits.max_messages
        and held + size <= limits.max_message_bytes
        and store.request_bytes() + size <= limits.max_total_bytes
    )
    if fits:
        tx.hold(group_id, envelope)
    else:
        tx.count_dropped(group_id)
    return fits


def dropped_requests(store: StateStore) -> int:
    """Invitations not held because the bounds were reached, since the profile began."""
    value = store.setting(DROPPED_SETTING)
    return int(value) if value and value.isdigit() else 0
