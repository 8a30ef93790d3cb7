"""The verified state of the groups this node serves: cached, and one writer per group.

Verifying a commit needs the group's public state (its ratchet tree: about
1 KiB per member), so the state of recently used groups stays in memory. A
cached state is used only while its epoch equals the stored epoch, which the
caller reads first; anything else reloads from storage. Commits to one group
are verified one at a time on this node (:meth:`GroupStates.locked`); across
nodes the storage's conditional epoch update decides, and the loser reloads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from qpq_core import DeliveryGroup
from qpq_proto.errors import NotFoundError
from qpq_server._mls import load_group
from qpq_server._storage import Storage

__all__ = ["GroupStates"]

#: Groups whose verified state stays in memory.
DEFAULT_CAPACITY = 1024


class GroupStates:
    """A bounded cache of group states plus a lock per group in use."""

    def __init__(self, storage: Storage, capacity: int = DEFAULT_CAPACITY) -> None:
        self._storage = storage
        self._capacity = capacity
        self._cache: collections.OrderedDict[bytes, DeliveryGroup] = collections.OrderedDict()
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

    async def get(self, group_id: bytes, epoch: int) -> DeliveryGroup:
        """The group's state at ``epoch`` (the stored epoch the caller just read)."""
        cached = self._cache.get(group_id)
        if cached is not None and cached.epoch() == epoch:
            self._cache.move_to_end(group_id)
            return cached
        stored = await self._storage.group_state(group_id)
        if stored is None:
            raise NotFoundError("no such group", field="group_id")
        _epoch, rows = stored
        state = await asyncio.to_thread(load_group, group_id, rows)
        self.remember(group_id, state)
        return state

    def remember(self, group_id: bytes, state: DeliveryGroup) -> None:
        """Keep ``state`` (it matches what storage now holds)."""
        self._cache[group_id] = state
        self._cache.move_to_end(group_id)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    def forget(self, group_id: bytes) -> None:
        """Drop a state that may no longer match storage (a verify whose store failed)."""
        self._cache.pop(group_id, None)

    def __len__(self) -> int:
        return len(self._cache)
