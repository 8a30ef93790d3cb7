"""What travels directly and what a send reports.

One rule keeps the two paths from doubling a message: its key is the
SHA-256 of the MLS message bytes (:func:`message_digest`). The direct path
and the server's fallback carry the very same bytes, so a host that
persists the digest of every message it processed, in the transaction that
persists the message, skips the second copy before MLS sees it (MLS would
refuse it anyway: its ratchet key is spent, and the refusal would surface
as an unreadable message).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["DirectFailure", "DirectMessage", "Receiver", "SendReport", "message_digest"]


def message_digest(message: bytes) -> bytes:
    """SHA-256 of an MLS message: the key a host dedupes both paths by."""
    return hashlib.sha256(message).digest()


@dataclass(frozen=True, slots=True)
class DirectMessage:
    """An MLS application message a peer delivered directly.

    Attributes:
        sender: the identity key the delivering peer proved on its
            connection (a member of ``group_id``); MLS authenticates the
            message's author separately.
        group_id: the group of the message (from its cleartext framing).
        epoch: the epoch it was sent in.
        payload: the MLS message (a PrivateMessage), exactly as it would
            arrive from the server.
        digest: :func:`message_digest` of ``payload``.
    """

    sender: bytes
    group_id: bytes
    epoch: int
    payload: bytes = field(repr=False)
    digest: bytes


#: A host's handler for one direct message. It returns only once the
#: message is processed and persisted with its digest (or its digest is
#: already there: a copy seen before), and raises
#: :class:`~qpq_p2p.DeliveryDeferredError` for a message it cannot take now.
#: Calls are serialized: one at a time per node.
Receiver = Callable[[DirectMessage], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DirectFailure:
    """Why a direct delivery to one member did not happen."""

    recipient: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class SendReport:
    """How a message left.

    Attributes:
        direct: members whose host acknowledged it directly.
        failed: members a direct delivery did not reach, and why.
        via_server: the message was also (or only) published through the
            server, which delivers it to every member; those in ``direct``
            skip that copy by its digest.
    """

    direct: tuple[bytes, ...]
    failed: tuple[DirectFailure, ...]
    via_server: bool
