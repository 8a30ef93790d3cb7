"""The verified state of the groups this node serves: cached, and one writer per group.

Verifying a commit needs the group's public state (its ratchet tree: about
1 KiB per member), so the state of recently used groups stays in memory,
with the version it was stored at (:class:`~._storage.GroupVersion`). A
cached state is used only while that version equals the stored one, read
just before; anything else reloads the state and its version in one
snapshot, so a proposal or commit stored through another node is never
missed, and a caller never verifies against a state newer than the version
it was given (another node may commit between the two reads). Changes to one group
are verified one at a time on this node (:meth:`GroupStates.locked`);
across nodes the storage's conditional update of the version decides, and
the loser reloads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from qpq_core import DeliveryGroup
from qpq_proto.errors import NotFoundError
from qpq_server._mls import load_group
from qpq_server._storage import GroupVersion, Storage

__all__ = ["GroupStates"]

#: Groups whose verified state stays in memory.
DEFAULT_CAPACITY = 1024


class GroupStates:
    """A bounded cache of group states plus a lock per group in use."""

    def __init__(self, storage: Storage, capacity: int = DEFAULT_CAPACITY) -> None:
        self._storage = storage
        self._capacity = capacity
        self._cache: collections.OrderedDict[bytes, tuple[GroupVersion, DeliveryGroup]] = (
            collections.OrderedDict()
        )
        self._locks: dict[bytes, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def locked(self, group_id: bytes) -> AsyncIterator[None]:
        """Hold the group's lock: one verify-and-store at a time per group on this node."""
        lock, users = self._locks.get(group_id, (asyncio.Lock(), 0))
        self._locks[group_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[group_id]
            if users == 1:
                del self._locks[group_id]
            else:
                self._locks[group_id] = (lock, users - 1)

    async def current(self, group_id: bytes) -> tuple[GroupVersion, DeliveryGroup]:
        """The group's stored state and the version it is at, which agree."""
        head = await self._storage.group_version(group_id)
        if head is None:
            raise NotFoundError("no such group", field="group_id")
        cached = self._cache.get(group_id)
        if cached is not None and cached[0] == head:
            self._cache.move_to_end(group_id)
            return cached
        stored = await self._storage.group_state(group_id)
        if stored is None:
            raise NotFoundError("no such group", field="group_id")
        at, rows = stored  # one snapshot: possibly newer than ``head``, never mixed
        state = await asyncio.to_thread(load_group, group_id, rows)
        self.remember(group_id, state, at)
        return at, state

    def remember(self, group_id: bytes, state: DeliveryGroup, version: GroupVersion) -> None:
        """Keep ``state``, which storage now holds at ``version``."""
        self._cache[group_id] = (version, state)
        self._cache.move_to_end(group_id)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    def forget(self, group_id: bytes) -> None:
        """Drop a state that may no longer match storage (a verify whose store failed)."""
        self._cache.pop(group_id, None)

    def __len__(self) -> int:
        return len(self._cache)
