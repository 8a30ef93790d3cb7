"""The periodic cleanup written once for both backends: each kind of row in bounded batches.

A backend provides one method per kind of row that removes at most one
batch of it in one transaction and returns how many it removed;
:func:`expire` and :func:`remove_unused` run them until a batch comes back
short, so other calls are served between batches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from qpq_server._storage import Retention, Unused, seq_floor

__all__ = ["EXPIRE_BATCH", "GROUP_BATCH", "Batches", "expire", "remove_unused"]

#: Rows one cleanup transaction removes, at most (groups: GROUP_BATCH).
EXPIRE_BATCH = 1000
#: Groups removed per transaction (each takes its state, roster and commits along).
GROUP_BATCH = 100


class Batches(Protocol):
    """One bounded batch of each kind of row a cleanup removes."""

    async def _expire_messages_batch(self, now_ms: int) -> int: ...

    async def _expire_key_packages_batch(self, now_s: int) -> int: ...

    async def _remove_idle_queues(self, below_seq: int) -> int: ...

    async def _remove_unused_groups(self, used_before_ms: int) -> int: ...

    async def _remove_old_endpoints(self, before_ms: int) -> int: ...

    async def _remove_released_usernames(self, before_ms: int) -> int: ...


async def _in_batches(batch: Callable[[int], Awaitable[int]], bound: int, size: int) -> int:
    """Run ``batch(bound)`` until it removes fewer than ``size`` rows; the total removed."""
    total = 0
    while True:
        removed = await batch(bound)
        total += removed
        if removed < size:
            return total


async def expire(store: Batches, *, now_ms: int, now_s: int) -> tuple[int, int]:
    """Expired messages and KeyPackages removed (see ``Storage.expire``)."""
    messages = await _in_batches(store._expire_messages_batch, now_ms, EXPIRE_BATCH)
    packages = await _in_batches(store._expire_key_packages_batch, now_s, EXPIRE_BATCH)
    return messages, packages


async def remove_unused(store: Batches, *, now_ms: int, retention: Retention) -> Unused:
    """Rows nobody needs any more removed (see ``Storage.remove_unused``)."""
    below_seq = seq_floor(now_ms - retention.queue_idle_ms)
    return Unused(
        queues=await _in_batches(store._remove_idle_queues, below_seq, EXPIRE_BATCH),
        groups=await _in_batches(
            store._remove_unused_groups, now_ms - retention.group_idle_ms, GROUP_BATCH
        ),
        endpoints=await _in_batches(
            store._remove_old_endpoints, now_ms - retention.endpoints_ms, EXPIRE_BATCH
        ),
        username_holds=await _in_batches(
            store._remove_released_usernames,
            now_ms - retention.username_hold_ms,
            EXPIRE_BATCH,
        ),
    )
