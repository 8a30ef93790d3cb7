"""Wake waiting fetchWait and subscribe calls the moment a message is stored.

A waiter registers a :class:`Watch` *before* it reads the queue, so a message
committed between the read and the wait still wakes it (no lost wake-ups,
no polling). Everything runs on the event loop; the storage reports each
fan-out once it committed (:meth:`DeliveryNotifier.delivered`, its
``on_commit``), whatever became of the call that stored it. This notifier
is per process; with several nodes on one PostgreSQL database, the storage
also feeds it what the other nodes stored (``Storage.watch_deliveries``,
LISTEN/NOTIFY).

A subscription's watch also *carries* what was delivered: where the
storage reports each recipient's seqs in seq order (one writer), the
message and its seq ride along, and the subscription pushes them without
reading its queue back. Anything else (a gap notice, a commit with its
Welcome, another node's delivery, a backlog above :data:`CARRIED_MAX`)
marks the watch stale instead, and the subscription reads its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from qpq_server._storage import Delivered, Queued

__all__ = ["CARRIED_MAX", "DeliveryNotifier", "Watch"]

#: Deliveries one watch carries at most; beyond, it reads its queue instead.
CARRIED_MAX = 256


class Watch:
    """One waiter's wake-up flag for one recipient, and what it carries.

    Args:
        notifier: where it is registered.
        carries: keep what is delivered (a subscription), not only wake.
    """

    def __init__(self, notifier: DeliveryNotifier, *, carries: bool = False) -> None:
        self._event = asyncio.Event()
        self._notifier = notifier
        self._carries = carries
        #: Deliveries since the queue was last read, in seq order.
        self.carried: list[tuple[Queued, int]] = []
        #: Something was stored that :attr:`carried` does not hold: read the queue.
        self.stale = True

    def clear(self) -> None:
        """Forget earlier wake-ups; call before re-reading the queue."""
        if not self._notifier.closed:
            self._event.clear()

    def set(self) -> None:
        """Wake the waiter; what it carries no longer says all that is new."""
        self.stale = True
        self.carried.clear()
        self._event.set()

    def nudge(self) -> None:
        """Wake the waiter for something else than a delivery (what it carries stands)."""
        self._event.set()

    def offer(self, queued: Queued | None, seq: int) -> None:
        """A delivery of ``queued`` with ``seq`` committed (None: read it from the queue)."""
        if queued is None or not self._carries or self.stale or len(self.carried) >= CARRIED_MAX:
            self.set()
            return
        self.carried.append((queued, seq))
        self._event.set()

    def take(self) -> list[tuple[Queued, int]]:
        """What it carries, handed over (the watch keeps carrying what follows)."""
        carried, self.carried = self.carried, []
        return carried

    def reading(self) -> None:
        """The queue is about to be read: everything committed so far is in it."""
        self.stale = False
        self.carried.clear()

    @property
    def closed(self) -> bool:
        """True once the server is shutting down."""
        return self._notifier.closed

    async def wait(self, seconds: float | None) -> bool:
        """Wait for a wake-up; False when ``seconds`` passed without one (None: no limit)."""
        if seconds is None:
            await self._event.wait()
            return True
        try:
            async with asyncio.timeout(seconds):
                await self._event.wait()
        except TimeoutError:
            return False
        return True


class DeliveryNotifier:
    """Per-recipient wake-ups for queue readers."""

    def __init__(self) -> None:
        self._watches: dict[bytes, set[Watch]] = {}
        self.closed = False
        #: Registered watches: fetchWait and subscribe calls waiting for messages.
        #: A plain int, so the metrics thread reads it without touching the dict.
        self.waiting = 0

    @contextlib.contextmanager
    def watch(self, recipient: bytes, *, carries: bool = False) -> Iterator[Watch]:
        """Register a watch on ``recipient``'s queue for the ``with`` block.

        ``carries``: the watch keeps what is delivered (:class:`Watch`).
        """
        watch = Watch(self, carries=carries)
        if self.closed:
            watch.set()
        watchers = self._watches.setdefault(recipient, set())
        watchers.add(watch)
        self.waiting += 1
        try:
            yield watch
        finally:
            self.waiting -= 1
            watchers.discard(watch)
            if not watchers and self._watches.get(recipient) is watchers:
                del self._watches[recipient]

    def notify(self, recipient: bytes) -> None:
        """Something for ``recipient`` was committed (read its queue to see what)."""
        for watch in self._watches.get(recipient, ()):
            watch.set()

    def delivered(self, delivered: Delivered, in_order: bool) -> None:
        """A fan-out committed (the storage's ``on_commit``).

        ``in_order``: the storage reports each recipient's seqs in seq
        order, so a watch may carry them; else every watch reads its queue.
        """
        queued = delivered.queued if in_order else None
        watches = self._watches
        for recipient, seq in delivered.seqs.items():
            for watch in watches.get(recipient, ()):
                watch.offer(queued, seq)
        for recipient in delivered.gaps:
            self.notify(recipient)

    def notify_all(self) -> None:
        """Wake every waiter: what was stored may have been missed (each re-reads its queue)."""
        for watchers in self._watches.values():
            for watch in watchers:
                watch.set()

    def close(self) -> None:
        """Wake every waiter for shutdown; later watches start awake."""
        self.closed = True
        self.notify_all()
