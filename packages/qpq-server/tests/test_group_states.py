"""The verified group state a node caches, against a second node's writes.

Another node may store a commit between a node's two reads of a group (its
version, then its state rows): the state must come back with the version it
is at, or a publish verifies a commit of the old epoch against the new state
and answers invalidArgument where the loser should learn of the conflict.
"""

from __future__ import annotations

import hashlib

from conftest import OpenStore
from groups import Member
from storage_checks import delivery

from qpq_server._group_states import GroupStates
from qpq_server._mls import register_group, verify
from qpq_server._storage import GroupUpdate, GroupVersion, Storage


class _CommitsBetweenReads:
    """A storage through which another node commits right after a version read."""

    def __init__(self, storage: Storage, commit: GroupUpdate, commit_payload: bytes) -> None:
        self._storage = storage
        self._commit: tuple[GroupUpdate, bytes] | None = (commit, commit_payload)

    async def group_version(self, group_id: bytes) -> GroupVersion | None:
        head = await self._storage.group_version(group_id)
        if self._commit is not None:
            update, payload = self._commit
            self._commit = None
            await self._storage.apply_group_update(
                group_id, update, recipients=(), delivery=delivery(b"other", payload)
            )
        return head

    async def group_state(self, group_id: bytes) -> object:
        return await self._storage.group_state(group_id)


async def test_a_state_comes_with_the_version_it_is_at_when_another_node_commits_between_reads(
    open_store: OpenStore,
) -> None:
    storage: Storage = await open_store()
    alice = Member.generate()
    created = alice.mls.create_group(None)
    state, registered = register_group(created.group_info)
    group_id = registered.group_id
    await storage.create_group(
        group_id,
        creator=alice.key,
        epoch=0,
        members=(alice.key,),
        state=registered.changes,
        group_info=created.group_info,
        now_ms=1,
        max_created=1 << 30,
    )
    bundle = alice.mls.self_update(group_id)
    change = verify(state, bundle.commit, bundle.group_info)
    update = GroupUpdate(
        from_epoch=0,
        from_version=0,
        epoch=change.epoch,
        state=change.changes,
        members=change.members,  # type: ignore[union-attr]
        group_info=bundle.group_info,
        commit_hash=hashlib.sha256(bundle.commit).digest(),
    )
    groups = GroupStates(_CommitsBetweenReads(storage, update, bundle.commit))  # type: ignore[arg-type]

    try:
        version, loaded = await groups.current(group_id)
    finally:
        await storage.close()

    assert (version.epoch, loaded.epoch()) == (1, 1)
