"""The per-user MLS state: :class:`MlsClient`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from qpq_core import _mls
from qpq_core._identity import Identity
from qpq_core._limits import MAX_KEY_PACKAGE_BYTES, MAX_MESSAGE_BYTES, check_size
from qpq_core._results import (
    ApplicationMessage,
    Cleared,
    CommitApplied,
    CommitBundle,
    Encrypted,
    GroupCreated,
    Joined,
    KeyPackagesCreated,
    OwnMessage,
    ProposalCreated,
    ProposalStored,
)

__all__ = ["DEFAULT_KEY_PACKAGE_LIFETIME_SECONDS", "MlsClient"]

#: 28 days: a third of the longest lifetime a validator accepts.
DEFAULT_KEY_PACKAGE_LIFETIME_SECONDS = 28 * 24 * 3600


def _rows(stored: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(bytes(key), bytes(value)) for key, value in stored]


class MlsClient:
    """One user's MLS groups, backed by rows the host persists.

    Every mutating call returns a frozen result whose ``changes`` the host
    persists in one transaction. On any error the in-memory state is rolled
    back, a :class:`~qpq_core.errors.MlsError` is raised, and nothing needs
    persisting. Calls on one client are serialized; crypto runs without the
    GIL.

    Args:
        identity: this user's identity (its key signs everything).
        stored: every (key, value) row persisted so far, i.e. all change sets
            applied in order.
    """

    __slots__ = ("_inner", "identity")

    def __init__(self, identity: Identity, stored: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.identity = identity
        self._inner = _mls.MlsClient(identity, _rows(stored))

    def __repr__(self) -> str:
        return f"MlsClient({self.identity!r})"

    def reload(self, stored: Iterable[tuple[bytes, bytes]]) -> None:
        """Drop every cache and repopulate from the persisted rows.

        The same path as startup; call it when persisting a change set failed.
        """
        self._inner.reload(_rows(stored))

    def create_key_packages(
        self,
        count: int,
        *,
        lifetime_seconds: int = DEFAULT_KEY_PACKAGE_LIFETIME_SECONDS,
        last_resort: bool = False,
    ) -> KeyPackagesCreated:
        """Create ``count`` KeyPackages (the private keys go into ``changes``)."""
        packages, changes = self._inner.create_key_packages(count, lifetime_seconds, last_resort)
        return KeyPackagesCreated(packages, changes)

    def create_group(self, group_id: bytes | None = None) -> GroupCreated:
        """Create a group (a random 16-byte id unless given) at epoch 0."""
        gid, changes = self._inner.create_group(group_id)
        return GroupCreated(gid, changes)

    def add_members(self, group_id: bytes, key_packages: Sequence[bytes]) -> CommitBundle:
        """Commit adding the owners of ``key_packages``; leaves a pending commit."""
        kps = [check_size(kp, MAX_KEY_PACKAGE_BYTES) for kp in key_packages]
        commit, welcome, epoch, changes = self._inner.add_members(group_id, kps)
        return CommitBundle(group_id, commit, welcome, epoch, changes)

    def remove_members(self, group_id: bytes, identity_keys: Sequence[bytes]) -> CommitBundle:
        """Commit removing members by identity key; leaves a pending commit."""
        commit, welcome, epoch, changes = self._inner.remove_members(
            group_id, [bytes(k) for k in identity_keys]
        )
        return CommitBundle(group_id, commit, welcome, epoch, changes)

    def self_update(self, group_id: bytes) -> CommitBundle:
        """Commit a fresh leaf key (post-compromise security)."""
        commit, welcome, epoch, changes = self._inner.self_update(group_id)
        return CommitBundle(group_id, commit, welcome, epoch, changes)

    def commit_pending_proposals(self, group_id: bytes) -> CommitBundle:
        """Commit the stored proposals (e.g. a member's leave)."""
        commit, welcome, epoch, changes = self._inner.commit_pending_proposals(group_id)
        return CommitBundle(group_id, commit, welcome, epoch, changes)

    def leave(self, group_id: bytes) -> ProposalCreated:
        """Propose our own removal; another member commits it."""
        proposal, changes = self._inner.leave(group_id)
        return ProposalCreated(group_id, proposal, changes)

    def merge_pending_commit(self, group_id: bytes) -> CommitApplied:
        """Apply our pending commit once the delivery service accepted it."""
        epoch, added, removed, self_removed, changes = self._inner.merge_pending_commit(group_id)
        return CommitApplied(group_id, epoch, added, removed, self_removed, changes)

    def clear_pending_commit(self, group_id: bytes) -> Cleared:
        """Drop our pending commit after the delivery service rejected it."""
        return Cleared(group_id, self._inner.clear_pending_commit(group_id))

    def join_from_welcome(self, welcome: bytes) -> Joined:
        """Join from a Welcome (the ratchet tree travels inside it).

        Every member's credential identity must equal its signature key.
        """
        gid, epoch, members, changes = self._inner.join_from_welcome(
            check_size(welcome, MAX_MESSAGE_BYTES)
        )
        return Joined(gid, epoch, members, changes)

    def encrypt(self, group_id: bytes, plaintext: bytes) -> Encrypted:
        """Encrypt an application message for the group."""
        message, changes = self._inner.encrypt(group_id, plaintext)
        return Encrypted(group_id, message, changes)

    def process(
        self, message: bytes
    ) -> ApplicationMessage | CommitApplied | ProposalStored | OwnMessage:
        """Process any incoming group message.

        A commit is validated and merged in this one call.

        Raises:
            WrongGroupError, WrongEpochError, ReplayedMessageError,
            DecryptionError, MalformedMlsMessageError, ...: state unchanged.
        """
        p = self._inner.process(check_size(message, MAX_MESSAGE_BYTES))
        if p.kind == "application":
            return ApplicationMessage(p.group_id, p.epoch, p.sender, p.plaintext, p.changes)
        if p.kind == "commit":
            return CommitApplied(p.group_id, p.epoch, p.added, p.removed, p.self_removed, p.changes)
        if p.kind == "proposal":
            return ProposalStored(p.group_id, p.epoch, p.sender, p.changes)
        return OwnMessage(p.group_id, p.changes)

    def group_ids(self) -> tuple[bytes, ...]:
        """Ids of the groups held in this state."""
        return self._inner.group_ids()

    def members(self, group_id: bytes) -> tuple[bytes, ...]:
        """Identity keys of the group's members, in leaf order."""
        return self._inner.members(group_id)

    def epoch(self, group_id: bytes) -> int:
        """The group's current epoch."""
        return self._inner.epoch(group_id)

    def has_pending_proposals(self, group_id: bytes) -> bool:
        """True when proposals wait to be committed (sending is blocked)."""
        return self._inner.has_pending_proposals(group_id)

    def has_pending_commit(self, group_id: bytes) -> bool:
        """True when a commit of ours waits for merge or clear."""
        return self._inner.has_pending_commit(group_id)

    def export_secret(self, group_id: bytes, label: str, context: bytes, length: int) -> bytes:
        """The MLS exporter (RFC 9420 §8.5); equal across the members of an epoch."""
        return self._inner.export_secret(group_id, label, context, length)
