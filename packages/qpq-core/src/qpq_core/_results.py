"""The frozen results of :class:`qpq_core.MlsClient` operations.

Each carries ``changes``: the storage rows the operation changed, to persist
in one transaction together with the application's own rows. ``changes`` and
plaintexts hold secrets, so they stay out of ``repr``.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field

__all__ = [
    "ApplicationMessage",
    "ChangeSet",
    "Cleared",
    "CommitApplied",
    "CommitBundle",
    "Encrypted",
    "GroupCreated",
    "Joined",
    "KeyPackagesCreated",
    "OwnMessage",
    "ProposalCreated",
    "ProposalStored",
    "apply_changes",
]

#: Storage key -> new value, or ``None`` to delete. Persist atomically.
ChangeSet = tuple[tuple[bytes, bytes | None], ...]


def apply_changes(rows: MutableMapping[bytes, bytes], changes: ChangeSet) -> None:
    """Apply a change set to an in-memory table (tests, simple hosts)."""
    for key, value in changes:
        if value is None:
            rows.pop(key, None)
        else:
            rows[key] = value


@dataclass(frozen=True, slots=True)
class KeyPackagesCreated:
    """New KeyPackages (MLSMessage-wrapped), ready to upload."""

    packages: tuple[bytes, ...] = field(repr=False)
    changes: ChangeSet = field(repr=False)


@dataclass(frozen=True, slots=True)
class GroupCreated:
    """A new group with this client as its only member, at epoch 0."""

    group_id: bytes
    changes: ChangeSet = field(repr=False)


@dataclass(frozen=True, slots=True)
class CommitBundle:
    """A commit of ours, pending until the delivery service accepts it.

    Attributes:
        group_id: the group.
        commit: the commit to publish to the group.
        welcome: for added members, sent only after the merge; else ``None``.
        epoch: the epoch the commit is for (the current one).
        changes: rows to persist, including the pending commit.
    """

    group_id: bytes
    commit: bytes = field(repr=False)
    welcome: bytes | None = field(repr=False)
    epoch: int
    changes: ChangeSet = field(repr=False)


@dataclass(frozen=True, slots=True)
class ProposalCreated:
    """A proposal of ours (leaving) that another member must commit."""

    group_id: bytes
    proposal: bytes = field(repr=False)
    changes: ChangeSet = field(repr=False)


@dataclass(frozen=True, slots=True)
class CommitApplied:
    """A commit was merged: ours (after the DS accepted it) or a peer's.

    Attributes:
        group_id: the group.
        epoch: the new epoch.
        added: identity keys that joined.
        removed: identity keys that were removed.
        self_removed: this client was removed; its group state is deleted.
        changes: rows to persist.
    """

    group_id: bytes
    epoch: int
    added: tuple[bytes, ...]
    removed: tuple[bytes, ...]
    self_removed: bool
    changes: ChangeSet = field(repr=False)


@dataclass(frozen=True, slots=True)
class Cleared:
    """Our pending commit was dropped (the DS rejected it)."""

    group_id: bytes
    changes: ChangeSet = field(repr=False)


@dataclass(frozen=True, slots=True)
class Joined:
    """This client joined a group from a Welcome."""

    group_id: bytes
    epoch: int
    members: tuple[bytes, ...]
    changes: ChangeSet = field(repr=False)


@dataclass(frozen=True, slots=True)
class Encrypted:
    """An application message. Persist ``changes`` before sending it: a
    resent ratchet generation would reuse a key and nonce."""

    group_id: bytes
    message: bytes = field(repr=False)
    changes: ChangeSet = field(repr=False)


@dataclass(frozen=True, slots=True)
class ApplicationMessage:
    """A decrypted application message from ``sender`` (identity key)."""

    group_id: bytes
    epoch: int
    sender: bytes
    plaintext: bytes = field(repr=False)
    changes: ChangeSet = field(repr=False)


@dataclass(frozen=True, slots=True)
class ProposalStored:
    """A member's leave proposal was validated and stored; commit it with
    :meth:`MlsClient.commit_pending_proposals`."""

    group_id: bytes
    epoch: int
    sender: bytes
    changes: ChangeSet = field(repr=False)


@dataclass(frozen=True, slots=True)
class OwnMessage:
    """Our own message echoed back by the delivery service; nothing to do."""

    group_id: bytes
    changes: ChangeSet = field(repr=False)
