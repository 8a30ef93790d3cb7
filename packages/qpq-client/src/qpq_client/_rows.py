"""What the state store hands out: group, history, outbox and trust rows."""

from __future__ import annotations

import enum
import unicodedata
from dataclasses import dataclass, field

from qpq_proto import Envelope

__all__ = [
    "GroupRow",
    "GroupStatus",
    "HeldRow",
    "HistoryRow",
    "OutboxKind",
    "OutboxRow",
    "OutboxState",
    "PersonRow",
    "PinRow",
    "RequestRow",
    "username_key",
]


class GroupStatus(enum.StrEnum):
    """Where we stand in a group (``GroupRow.status``, ``GroupSummary.status``).

    A ``StrEnum``: each member equals its text (``GroupStatus.ACTIVE == "active"``).
    """

    ACTIVE = "active"
    LEAVING = "leaving"  # our leave proposal awaits a commit by another member
    LEFT = "left"
    REMOVED = "removed"
    #: Invited by someone who is not a contact: not joined until the user accepts.
    REQUESTED = "requested"
    #: Invitation declined: joined only to leave; nothing in it is shown or kept.
    DECLINED = "declined"


class OutboxKind(enum.StrEnum):
    """What an outbox row holds."""

    APPLICATION = "app"
    PROPOSAL = "proposal"
    COMMIT = "commit"
    #: A new group's epoch-0 GroupInfo, to register it on the server.
    GROUP = "group"


class OutboxState(enum.StrEnum):
    """Where an outbox row stands. A row the server refuses for good is
    dropped (and reported), not kept in a state of its own."""

    #: Persisted, not yet accepted by the server.
    PENDING = "pending"
    #: A commit the server accepted and we merged; the group's name is still to announce.
    MERGED = "merged"


@dataclass(frozen=True, slots=True)
class GroupRow:
    """A group as the profile knows it.

    ``group_id`` is the row's key: the MLS group id, except for an
    archived entry (an ended membership of a group id joined again), whose
    key is local and whose MLS group id is ``archived_from``.
    """

    group_id: bytes
    name: str
    status: GroupStatus
    named: bool
    #: We cannot follow the group from our state (messages the server could
    #: not queue for us, a commit our MLS refused): rejoin it.
    needs_rejoin: bool = False
    #: An epoch whose GroupInfo, as the server serves it, is not our view of it.
    wrong_group_info: int | None = None
    #: Joined below the server's epoch: once caught up we must have reached it.
    confirm_epoch: int | None = None
    #: For an archived entry, the MLS group id it was.
    archived_from: bytes | None = None

    @property
    def shows_history(self) -> bool:
        """Whether what happens in the group goes into its history (not a
        request not yet accepted, nor a declined invitation)."""
        return self.status not in (GroupStatus.DECLINED, GroupStatus.REQUESTED)

    @property
    def mls_group_id(self) -> bytes:
        """The MLS group id of the entry (archived or not)."""
        return self.archived_from if self.archived_from is not None else self.group_id


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One line of a group's history: a text message or an event."""

    id: int
    group_id: bytes
    kind: str
    sender: bytes | None
    body: str
    sent_at: int
    received_at: int
    seq: int | None
    #: For a message that arrived directly: ``unconfirmed`` until the
    #: server's history confirmed its sender, ``withdrawn`` if it did not.
    direct: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A message persisted before it is handed to the server."""

    id: int
    kind: OutboxKind
    group_id: bytes
    epoch: int
    payload: bytes
    welcome: bytes | None
    group_info: bytes | None
    state: OutboxState
    #: When it was persisted (unix milliseconds).
    created_at: int = 0


@dataclass(frozen=True, slots=True)
class PersonRow:
    """An identity we know: the username the server gave for it, and how we treat it."""

    identity_key: bytes
    username: str
    contact: bool
    blocked: bool


@dataclass(frozen=True, slots=True)
class PinRow:
    """The identity key pinned for a username on first use (TOFU)."""

    username: str
    identity_key: bytes
    verified: bool
    #: Another key the server gave for this name since; None while it agrees.
    changed_key: bytes | None


@dataclass(frozen=True, slots=True)
class RequestRow:
    """An invitation held until the user accepts or declines it."""

    group_id: bytes
    inviter: bytes
    welcome: bytes = field(repr=False)
    #: Messages of its group that were not held (over the bounds of a request).
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class HeldRow:
    """A message of a requested group, held (already acknowledged) until the decision."""

    id: int
    envelope: Envelope


def username_key(username: str) -> str:
    """How this profile compares usernames: NFKC case-folded, like the server's names."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username).casefold())
