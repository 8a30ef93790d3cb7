"""Wake waiting fetchWait and subscribe calls the moment a message is stored.

A waiter registers a :class:`Watch` *before* it reads the queue, so a message
committed between the read and the wait still wakes it (no lost wake-ups,
no polling). Everything runs on the event loop; ``notify`` is called after
the storage transaction has committed. This notifier is per process; with
several nodes on one PostgreSQL database, the storage also feeds it what
the other nodes stored (``Storage.watch_deliveries``, LISTEN/NOTIFY).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

__all__ = ["DeliveryNotifier", "Watch"]


class Watch:
    """One waiter's wake-up flag for one recipient."""

    def __init__(self, notifier: DeliveryNotifier) -> None:
        self._event = asyncio.Event()
        self._notifier = notifier

    def clear(self) -> None:
        """Forget earlier wake-ups; call before re-reading the queue."""
        if not self._notifier.closed:
            self._event.clear()

    def set(self) -> None:
        self._event.set()

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
    def watch(self, recipient: bytes) -> Iterator[Watch]:
        """Register a watch on ``recipient``'s queue for the ``with`` block."""
        watch = Watch(self)
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
        """A message for ``recipient`` was committed."""
        for watch in self._watches.get(recipient, ()):
            watch.set()

    def notify_all(self) -> None:
        """Wake every waiter: what was stored may have been missed (each re-reads its queue)."""
        for watchers in self._watches.values():
            for watch in watchers:
                watch.set()

    def close(self) -> None:
        """Wake every waiter for shutdown; later watches start awake."""
        self.closed = True
        self.notify_all()
