"""Who may talk to whom: members of a group that both sides hold in their MLS state.

A node reads its host's MLS state through :class:`GroupRosters`, which
``qpq_core.MlsClient`` satisfies as it is. In qpq an identity key is the
member's MLS credential and leaf signature key (docs/mls.md, "Identity and
credentials"), so "is this key a member" is a lookup in the group's roster.
"""

from __future__ import annotations

from typing import Protocol

from qpq_core import MlsError

__all__ = ["GroupRosters", "group_members", "known_peers", "shared_groups"]


class GroupRosters(Protocol):
    """The read-only part of ``qpq_core.MlsClient`` a node needs: which groups
    we hold, each one's roster, and its exporter (mDNS ids are keyed by it)."""

    def group_ids(self) -> tuple[bytes, ...]:
        """Ids of the groups held in this state."""
        ...

    def members(self, group_id: bytes) -> tuple[bytes, ...]:
        """Identity keys of the group's members at our current epoch."""
        ...

    def export_secret(self, group_id: bytes, label: str, context: bytes, length: int) -> bytes:
        """The MLS exporter (RFC 9420 §8.5), equal across the members of an epoch."""
        ...


def group_members(groups: GroupRosters, group_id: bytes) -> tuple[bytes, ...]:
    """The group's members, or none when the state does not hold it (any more)."""
    try:
        return groups.members(group_id)
    except MlsError:
        return ()


def shared_groups(groups: GroupRosters, me: bytes, peer: bytes) -> tuple[bytes, ...]:
    """The groups in which both ``me`` and ``peer`` are members now."""
    if peer == me:
        return ()
    shared = []
    for group_id in groups.group_ids():
        members = group_members(groups, group_id)
        if me in members and peer in members:
            shared.append(group_id)
    return tuple(shared)


def known_peers(groups: GroupRosters, me: bytes) -> dict[bytes, tuple[bytes, ...]]:
    """Every other member of every group we are in, with the groups shared with each."""
    peers: dict[bytes, list[bytes]] = {}
    for group_id in groups.group_ids():
        members = group_members(groups, group_id)
        if me not in members:
            continue
        for member in members:
            if member != me:
                peers.setdefault(member, []).append(group_id)
    return {key: tuple(ids) for key, ids in peers.items()}
