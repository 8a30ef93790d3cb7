"""What the library hands out about history and groups: frozen, plain values."""

from __future__ import annotations

from dataclasses import dataclass

from qpq_client._rows import GroupStatus
from qpq_core import Suite

__all__ = ["GroupSummary", "HistoryEntry", "OutboxEntry"]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One line of history.

    Attributes:
        group: the local group name.
        kind: ``"text"`` for a message, ``"event"`` for a membership change
            or a notice, ``"request"`` for an invitation that waits for
            :meth:`Client.accept` or :meth:`Client.decline`.
        sender: username of the author (ours for what we sent).
        body: the text.
        sent_at_ms: when the author sent it (unix milliseconds).
        outgoing: True for what we sent.
        unconfirmed: a message that arrived directly from its sender while
            the server could not be reached: shown before the server's
            history could confirm that its sender is still a member.
        withdrawn: such a message whose sender turned out not to be a
            member once we caught up with the server (an event says so).
    """

    group: str
    kind: str
    sender: str
    body: str
    sent_at_ms: int
    outgoing: bool
    unconfirmed: bool = False
    withdrawn: bool = False


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """A group as this profile sees it (not RFC 9420's GroupInfo, which
    :mod:`qpq_core` deals in).

    Attributes:
        name: the local name.
        group_id: the MLS group id.
        status: ``active``, ``leaving``, ``left``, ``removed``, or
            ``requested`` (an invitation waiting for a decision); a
            :class:`GroupStatus`, equal to its text. A group id we left or
            were removed from and joined again has a new entry; the old one
            is listed too, as it was (``left`` or ``removed``, no members).
        members: usernames, ours included (empty once we are out).
        epoch: the MLS epoch, while we are in the group; members agree on it.
        dropped: for an invitation waiting as a request, how many messages
            of its group were not kept (over what a request may hold; see
            :mod:`qpq_client._request_bounds`); 0 otherwise.
        suite: the group's MLS ciphersuite (``Suite.DEFAULT``, or
            ``Suite.XWING`` for a post-quantum group), while we are in it;
            ``None`` otherwise.
        inviter: for an invitation waiting as a request, who invited us
            (the member who signed the Welcome); ``None`` otherwise.
    """

    name: str
    group_id: bytes
    status: GroupStatus
    members: tuple[str, ...]
    epoch: int | None = None
    dropped: int = 0
    suite: Suite | None = None
    inviter: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """Something persisted that the server has not taken yet (``qpq outbox``).

    Attributes:
        id: what :meth:`Client.drop_outbox` takes.
        group: the local name of its group.
        kind: ``message``, ``leave``, ``group change`` (a commit), ``group
            name`` (telling new members the group's name) or ``new group``
            (registering it on the server).
        created_at_ms: when it was persisted (unix milliseconds).
        size: its bytes (what the server must accept).
    """

    id: int
    group: str
    kind: str
    created_at_ms: int
    size: int
