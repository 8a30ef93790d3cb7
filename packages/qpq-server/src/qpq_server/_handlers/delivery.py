"""Reading one's queue: fetch, fetchWait, ack, subscribe (writes come from groups.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from qpq_proto import (
    Ack,
    Acked,
    Envelope,
    ErrorResponse,
    Event,
    Fetch,
    FetchWait,
    Messages,
    Subscribe,
    SubscribeWithAcks,
)
from qpq_proto.errors import UnavailableError
from qpq_proto.quic import StreamAcks
from qpq_server._answers import SMALL_ANSWER_BYTES
from qpq_server._context import App, CallContext
from qpq_server._notifier import Watch

#: Room left in a fetch answer for the message framing around the envelopes.
FETCH_HEADROOM_BYTES = 64 * 1024
#: SQLite integers are signed 64-bit; larger seqs cannot be stored.
_MAX_STORED_INT = 2**63 - 1
#: Messages read per storage round trip on a subscribe stream.
_SUBSCRIBE_BATCH = 100


def _fetch_budget(app: App) -> int:
    return app.limits.max_message_bytes - FETCH_HEADROOM_BYTES


async def _read(ctx: CallContext, recipient: bytes, limit: int) -> list[Envelope]:
    """What the queue holds for ``recipient`` now, once room for the answer is reserved.

    The room is the answer's own size, read from the payloads' lengths before
    the payloads: a small answer takes the small room every connection may
    use, and only a large one waits for the answer budget, so that clients
    that ask and never read delay the large answers of others, not every
    Fetch (docs/security.md, "Transport memory").
    """
    app = ctx.app
    now_ms = app.clock.wall_ms()
    budget = _fetch_budget(app)
    size = await app.storage.fetch_size(
        recipient, after_seq=0, limit=limit, max_bytes=budget, now_ms=now_ms
    )
    await ctx.reserve_answer(size + SMALL_ANSWER_BYTES)
    # At most what was reserved: a message queued meanwhile waits for the next call.
    return await app.storage.fetch(
        recipient, after_seq=0, limit=limit, max_bytes=max(size, 1), now_ms=now_ms
    )


async def fetch(ctx: CallContext, call: Fetch) -> Messages:
    return Messages(messages=tuple(await _read(ctx, ctx.identity(), call.limit)))


async def fetch_wait(ctx: CallContext, call: FetchWait) -> Messages:
    recipient = ctx.identity()
    app = ctx.app
    # Watch first, then read: a message stored in between still wakes us.
    with app.notifier.watch(recipient) as watch:
        for attempt in range(2):
            # Room for the answer before reading (its own size); little while
            # waiting, so that a long poll holds nothing of the budget for long.
            messages = await _read(ctx, recipient, call.limit)
            if messages or attempt == 1 or call.timeout_ms == 0 or watch.closed:
                break
            await ctx.reserve_answer(SMALL_ANSWER_BYTES)
            await watch.wait(call.timeout_ms / 1000)
    return Messages(messages=tuple(messages))


async def _ack(ctx: CallContext, recipient: bytes, up_to_seq: int) -> Acked:
    removed = await ctx.app.storage.ack(recipient, min(up_to_seq, _MAX_STORED_INT))
    return Acked(removed=min(removed, 0xFFFF_FFFF), up_to_seq=up_to_seq)


async def ack(ctx: CallContext, call: Ack) -> Acked:
    return await _ack(ctx, ctx.identity(), call.up_to_seq)


@dataclass(slots=True)
class Subscription:
    """An accepted subscribe call: the adapter sends Subscribed, then :meth:`events`."""

    ctx: CallContext
    recipient: bytes

    async def events(self, acks: StreamAcks | None = None) -> AsyncGenerator[Event, None]:
        """The unacknowledged backlog, then each new message, until shutdown.

        With ``acks`` (a SubscribeWithAcks stream), each acknowledgement the
        client wrote is applied and confirmed with an ``Acked`` event; of
        several that arrived meanwhile only the highest, in one write. An
        acknowledgement covers only what was pushed on this stream when it
        is applied (a client cannot delete what it was not sent), so a
        client causes at most one write per message it was sent, however
        many acknowledgements it writes. The client ending its side ends the
        stream; anything else it writes ends it with an error event.

        The backlog is read from the queue; what is stored after is pushed
        as the storage reports it committed (:meth:`DeliveryNotifier.delivered`),
        without reading it back, while the watch carries it; otherwise
        (a gap notice, a commit with a Welcome, another node's message, a
        subscriber far behind) the queue is read again from the last seq
        pushed. Ends with an Unavailable error event when the server shuts
        down; the client ending the stream cancels the task that iterates this.
        """
        with self.ctx.app.notifier.watch(self.recipient, carries=True) as watch:
            applier = None if acks is None else _AckApplier(self, acks, watch.nudge)
            try:
                async for event in self._pushes(watch, applier):
                    yield event
            finally:
                if applier is not None:
                    applier.close()
            if watch.closed:
                yield ErrorResponse.from_exception(UnavailableError("the server is shutting down"))

    async def _pushes(
        self, watch: Watch, applier: _AckApplier | None
    ) -> AsyncGenerator[Event, None]:
        """:meth:`events` until shutdown or, with acknowledgements, the client's end."""
        app = self.ctx.app
        last_seq = 0
        while not watch.closed:
            watch.clear()
            if applier is not None:
                confirmation = applier.next_event(last_seq)
                if confirmation is not None:
                    yield confirmation
                    if isinstance(confirmation, ErrorResponse):
                        return
                    continue
                if applier.ended:
                    return
            if watch.stale:
                watch.reading()
                batch: list[Envelope] = await app.storage.fetch(
                    self.recipient,
                    after_seq=last_seq,
                    limit=_SUBSCRIBE_BATCH,
                    max_bytes=_fetch_budget(app),
                    now_ms=app.clock.wall_ms(),
                )
                for envelope in batch:
                    last_seq = envelope.seq
                    yield envelope
                if batch:
                    watch.stale = True  # until a read finds nothing more
                    continue
            else:
                carried = watch.take()
                for queued, seq in carried:
                    if seq > last_seq:  # not read from the queue already
                        last_seq = seq
                        yield queued.envelope(seq)
                if carried:
                    continue
            await watch.wait(None)


class _AckApplier:
    """Applies what a client acknowledged on its stream, beside the pushes.

    One write at a time, for the highest acknowledgement waiting when it
    starts (so those that arrive meanwhile share the next), covering only
    what was pushed on the stream; its confirmation is pushed once it is
    done. Pushes never wait for a write.
    """

    def __init__(self, subscription: Subscription, acks: StreamAcks, wake: Callable[[], None]):
        self._subscription = subscription
        self._acks = acks
        self._wake = wake
        self._applied = 0
        self._pending: asyncio.Task[Acked] | None = None
        acks.wake = wake

    def next_event(self, last_seq: int) -> Event | None:
        """A confirmation to push now, or the error that ends the stream; else
        None, having started the write that is due, if any."""
        pending = self._pending
        if pending is not None and pending.done():
            self._pending = None
            return pending.result()  # a failed write ends the stream (internal)
        if self._acks.error is not None:
            return ErrorResponse.from_exception(self._acks.error)
        # What was not pushed yet is not covered: the client acknowledges
        # again once it has it.
        wanted = self._acks.highest = min(self._acks.highest, last_seq)
        if wanted > self._applied and pending is None:
            self._applied = wanted
            sub = self._subscription
            self._pending = asyncio.ensure_future(_ack(sub.ctx, sub.recipient, wanted))
            self._pending.add_done_callback(lambda _task: self._wake())
        return None

    @property
    def ended(self) -> bool:
        """The client ended its side, and what it acknowledged before is applied."""
        return self._acks.ended and self._pending is None

    def close(self) -> None:
        """The stream is over: a write under way completes; nobody waits for it."""
        if self._pending is not None and not self._pending.done():
            self._pending.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Task[Acked]) -> None:
    if not task.cancelled():
        task.exception()  # its outcome is nobody's: not logged as never retrieved


async def subscribe(ctx: CallContext, _call: Subscribe | SubscribeWithAcks) -> Subscription:
    # With acknowledgements, the adapter hands the stream's to events().
    return Subscription(ctx=ctx, recipient=ctx.identity())
