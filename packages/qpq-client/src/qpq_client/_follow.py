"""Receiving as messages arrive: the follow loop, and waiting for a first message.

:class:`Follower` is the receive side of an open :class:`~qpq_client.Client`:
``Client.follow()`` and ``Client.receive(wait=...)`` are it. A follower
catches up with the server, then takes what the server pushes on a
subscribe stream a batch at a time (processed, persisted in one
transaction, acknowledged in one call); a stream the server ends is opened
again after another catch-up. With direct delivery on, a member's direct
message (already stored when it arrives) wakes it too, and it goes on
without the server while the server is away.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Protocol

from qpq_client import _keys, _receive
from qpq_client._connection import Subscription
from qpq_client._session import Session
from qpq_client._state import StateStore
from qpq_client._views import HistoryEntry
from qpq_proto import DEFAULT_LIMITS, Envelope
from qpq_proto.errors import (
    ConnectionFailedError,
    InternalError,
    RateLimitedError,
    ServiceError,
    StreamResetError,
)

__all__ = ["Follower", "Operation"]

_log = logging.getLogger("qpq_client")
#: How long one wait for the server (fetchWait) or a member lasts.
FOLLOW_WAIT_MS = 30_000
#: A follower with nothing to receive pings the server this often: well
#: inside the QUIC idle timeout (60 s on our side), which a subscription
#: alone, making no calls, would otherwise reach.
_KEEPALIVE_SECONDS = 15.0
#: How long a follower that stops still waits for its last acknowledgement.
_ACK_GRACE_SECONDS = 2.0
#: Payload bytes a follower reads ahead of what it processed: what one
#: fetch answer may carry at most.
_READ_AHEAD_BYTES = DEFAULT_LIMITS.max_message_bytes


class Operation(Protocol):
    """One operation of the client under its profile lock (``Client._operation``)."""

    def __call__(self, *, catch_up: bool = True) -> contextlib.AbstractAsyncContextManager[Session]:
        """Hold the profile for one operation; with ``catch_up``, catch up first."""
        ...


class Follower:
    """The receive side of an open profile.

    Args:
        store: the profile's state.
        connected: the current session; raises NotConnectedError when there is none.
        operation: runs one operation under the profile lock.
        take_unshown: the history entries not shown yet, marked shown.
        direct_news: set when a member's direct message was stored.
    """

    def __init__(
        self,
        store: StateStore,
        connected: Callable[[], Session],
        operation: Operation,
        take_unshown: Callable[[], list[HistoryEntry]],
        direct_news: asyncio.Event,
    ) -> None:
        self._store = store
        self._connected = connected
        self._operation = operation
        self._take_unshown = take_unshown
        self._direct_news = direct_news

    async def follow(self) -> AsyncIterator[HistoryEntry]:
        """Yield each new history entry as it arrives, until cancelled (``Client.follow``)."""
        while True:
            async with self._operation():
                entries = self._take_unshown()
            for entry in entries:
                yield entry
            session = self._connected()
            if session.conn.lost:
                # Only with direct delivery do we get here without the server.
                await self.wait_and_process(FOLLOW_WAIT_MS)
                continue
            async with contextlib.aclosing(self._subscribed(session)) as batches:
                async for batch in batches:
                    for entry in batch:
                        yield entry

    async def _subscribed(self, session: Session) -> AsyncGenerator[list[HistoryEntry]]:
        """New entries, a batch of pushed messages at a time, until the stream ends."""
        # Seqs at or below this were deleted before the server read the
        # queue for this stream: pushed again, they mean it lost the queue.
        # Above it and acknowledged since (another operation fetched them
        # first), they are stale copies.
        acked_before = self._store.acked_seq()
        try:
            async with session.conn.subscribe() as subscription:
                session.following = True
                inbox = _Pushed(subscription.envelopes)
                acker = _Acker(session, subscription)
                try:
                    while True:
                        envelopes = await inbox.next_batch(self._direct_news, _KEEPALIVE_SECONDS)
                        if envelopes is None:
                            return
                        if not envelopes and not self._direct_news.is_set():
                            session.conn.keep_alive()
                            if _keys.keys_due(session) or acker.unrecorded(self._store):
                                # Claims bring no Welcome: count, and refill, on a timer.
                                async with self._operation(catch_up=False) as locked:
                                    await _keys.refill_if_due(locked)
                                    await _receive.persist_envelopes(
                                        locked, (), acknowledged=acker.unrecorded(self._store)
                                    )
                            continue
                        async with self._operation(catch_up=False) as locked:
                            acked = self._store.acked_seq()
                            fresh = [e for e in envelopes if not acked_before < e.seq <= acked]
                            # Shown once written; synced to disk before its Ack
                            # (docs/message-path.md: a receiver acknowledges only
                            # what is durable).
                            last = await _receive.persist_envelopes(
                                locked,
                                fresh,
                                acknowledged=acker.unrecorded(self._store),
                                durable=False,
                            )
                            # Under the lock a direct message is stored with: none is missed.
                            self._direct_news.clear()
                            entries = self._take_unshown()
                        if last is not None:
                            # Synced and acknowledged in the background, so
                            # that what it holds is shown now.
                            acker.ack(last)
                        if entries:
                            yield entries
                finally:
                    session.following = False
                    await acker.close()
                    await inbox.close()
        except RateLimitedError:
            # More streams of this identity than the server keeps (several
            # processes following one profile) replaced this one: wait once
            # the old way before taking a stream again, or the followers
            # would end each other's streams in turn.
            _log.info("the subscription was replaced; polling once before subscribing again")
            await self.wait_and_process(FOLLOW_WAIT_MS)
        except InternalError:
            # The server's side of the stream failed: catch up and subscribe again.
            _log.info("the subscription failed on the server; subscribing again")
        except StreamResetError:
            # The server resets a subscription that took nothing for its stall
            # time (a batch that took long to process), or the answer to a
            # call made while processing one (_receive.process): what it
            # pushed is still queued until acknowledged. Catch up and
            # subscribe again.
            _log.info("the server reset a stream we read too slowly; subscribing again")
        except ConnectionFailedError:
            if session.peers is None:
                raise
            _log.warning("the server is unreachable; messages go directly where they can")

    async def wait_and_process(self, wait_ms: int) -> None:
        """Wait up to ``wait_ms`` for a first message, then process what came."""
        session = self._connected()
        # Wait without the profile lock; the envelopes stay queued until acked,
        # and the processed-seq check skips any another process handled
        # meanwhile. A batch fetched before another process acknowledged
        # messages is stale (its seqs would look like a server that lost
        # its queue): then only what the server holds now is processed.
        acked = self._store.acked_seq()
        envelopes = await self._fetch_or_direct(session, max(1, wait_ms))
        if envelopes:
            async with self._operation(catch_up=False) as locked:
                if self._store.acked_seq() == acked:
                    await _receive.process_envelopes(locked, envelopes)
                await _receive.sync(locked)

    async def _fetch_or_direct(self, session: Session, wait_ms: int) -> tuple[Envelope, ...]:
        """What the server queued for us, waiting up to ``wait_ms``; with direct
        delivery on, an earlier direct message (already stored) ends the wait."""
        if session.peers is None:
            return await session.conn.fetch_wait(_receive.FETCH_LIMIT, wait_ms)
        self._direct_news.clear()
        if session.conn.lost:
            # The server is away: only a member's direct message can come.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_ms / 1000):
                    await self._direct_news.wait()
            return ()
        fetch = asyncio.ensure_future(session.conn.fetch_wait(_receive.FETCH_LIMIT, wait_ms))
        news = asyncio.ensure_future(self._direct_news.wait())
        try:
            await asyncio.wait((fetch, news), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (fetch, news):
                task.cancel()
            await asyncio.gather(fetch, news, return_exceptions=True)
        if not fetch.cancelled() and fetch.exception() is None:
            return fetch.result()
        if news.done() and not news.cancelled():
            return ()  # a direct message is stored: show it now
        if isinstance(fetch.exception(), ConnectionFailedError):
            return ()  # the server went away; the next wait listens for members only
        return fetch.result()  # the fetch's own error


class _Acker:
    """Acknowledges what a follower persisted, off its path: one
    acknowledgement at a time, for the highest seq persisted when it starts,
    so batches persisted meanwhile share the next one. Each follows a sync
    of the profile's database to disk (the batches were committed without
    one). It is written on the subscribe stream where the server takes it
    there, else sent as an Ack call (:class:`~qpq_client._connection.Subscription`).

    Nothing is lost when an acknowledgement does not arrive (the connection
    went, the follower stopped): what it covered stays queued, is pushed
    again, and is skipped as already processed (its seq is at or below the
    processed one). The seq the server confirmed is recorded by the follower
    with its next batch (:meth:`unrecorded`), so no write of its own waits
    on the lock.
    """

    def __init__(self, session: Session, subscription: Subscription) -> None:
        self._subscription = subscription
        self._store = session.store
        self._wanted = 0
        self._closing = False
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    def ack(self, seq: int) -> None:
        """Acknowledge everything up to ``seq`` (persisted) soon."""
        if seq > self._wanted:
            self._wanted = seq
            self._wake.set()

    @property
    def confirmed(self) -> int:
        """The highest seq the server confirmed deleting up to."""
        return self._subscription.confirmed

    def unrecorded(self, store: StateStore) -> int | None:
        """The confirmed seq if the store does not hold it yet, else None."""
        return self.confirmed if self.confirmed > store.acked_seq() else None

    async def _run(self) -> None:
        tried = 0
        while True:
            if self._wanted <= max(self.confirmed, tried):
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            seq = tried = self._wanted
            try:
                await self._store.sync_to_disk()  # only what is durable is acknowledged
                await self._subscription.ack(seq)
            except ServiceError as error:
                # The next batch's Ack covers this one's messages too.
                _log.info("an acknowledgement was refused (%s); the next one covers it", error)
                continue
            except ConnectionFailedError:
                return  # the subscription ends with the connection

    async def close(self) -> None:
        """Send what is still due (for a moment at most), then stop."""
        self._closing = True
        self._wake.set()
        _done, pending = await asyncio.wait({self._task}, timeout=_ACK_GRACE_SECONDS)
        for task in pending:
            task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class _Pushed:
    """Envelopes pushed on a subscribe stream, read ahead so that whatever has
    arrived is processed as one batch.

    It reads ahead one batch at most (a fetch's worth of envelopes, or of
    payload bytes): the transport takes no more from the server, and grants
    it no more credit, until a batch is taken, so a server that pushes
    faster than the follower processes is held to that plus the transport's
    stream window (docs/security.md).
    """

    def __init__(self, pushed: AsyncIterator[Envelope]) -> None:
        self._arrived: collections.deque[Envelope] = collections.deque()
        self._arrived_bytes = 0
        self._ended = False
        self._error: Exception | None = None
        self._wake = asyncio.Event()
        #: Set while less than a batch waits: the reader may take more.
        self._room = asyncio.Event()
        self._room.set()
        self._reader = asyncio.ensure_future(self._read(pushed))

    def _full(self) -> bool:
        return (
            len(self._arrived) >= _receive.FETCH_LIMIT or self._arrived_bytes >= _READ_AHEAD_BYTES
        )

    async def _read(self, pushed: AsyncIterator[Envelope]) -> None:
        try:
            async for envelope in pushed:
                self._arrived.append(envelope)
                self._arrived_bytes += len(envelope.payload)
                self._wake.set()
                if self._full():
                    self._room.clear()
                    await self._room.wait()
        except Exception as error:  # noqa: BLE001 - raised to the follower by next_batch
            self._error = error
        finally:
            self._ended = True
            self._wake.set()

    async def next_batch(self, direct_news: asyncio.Event, within: float) -> list[Envelope] | None:
        """What has arrived, waiting up to ``within`` for a first envelope, at
        most a fetch's worth.

        An empty list when nothing came in time or ``direct_news`` was set
        first (a member's direct message was stored); None once the stream
        ended without an error. Raises the error that ended it.
        """
        if not self._arrived and not self._ended:
            self._wake.clear()
            woken = asyncio.ensure_future(self._wake.wait())
            news = asyncio.ensure_future(direct_news.wait())
            try:
                await asyncio.wait(
                    (woken, news), timeout=within, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in (woken, news):
                    task.cancel()
                await asyncio.gather(woken, news, return_exceptions=True)
        if self._arrived:
            count = min(len(self._arrived), _receive.FETCH_LIMIT)
            batch = [self._arrived.popleft() for _ in range(count)]
            self._arrived_bytes -= sum(len(envelope.payload) for envelope in batch)
            if not self._full():
                self._room.set()
            return batch
        if not self._ended:
            return []
        if self._error is not None:
            raise self._error
        return None

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
