"""Push a subscription's events onto its stream, within a memory budget.

QUIC buffers whatever is written to a stream until the peer acknowledges it,
and a peer that grants no flow-control credit acknowledges nothing. So each
event waits, before it is written, until the stream holds less than its
budget of unacknowledged bytes (:class:`EventSink.wait_for_room`); a
subscriber that takes nothing for ``subscribe_stall_seconds`` has its stream
reset with :data:`STREAM_STALLED`, which lets QUIC drop what it buffered.

The stream always ends with a coded answer when it can: a failing event
source ends it with an ``internal`` event (the client resubscribes), a
replaced subscription with ``rate_limited`` (see :class:`SubscriptionRegistry`).
Only the transport-free parts live here, so they are tested without sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from qpq_proto import ErrorResponse, Event, ServerCall, Subscribed
from qpq_proto.errors import InternalError, RateLimitedError, ServiceError
from qpq_server._logging import get_logger

__all__ = [
    "STREAM_STALLED",
    "EventSink",
    "SubscriptionRegistry",
    "SubscriptionSlot",
    "pump_events",
]

_log = get_logger("subscribe")

#: Application error code on RESET_STREAM for a subscriber that took no data in time.
STREAM_STALLED = 0x12


class EventSink(Protocol):
    """Where a subscription's bytes go: one QUIC stream."""

    def send(self, data: bytes, end_stream: bool) -> bool:
        """Write ``data``; False when the stream can take nothing more."""
        ...

    async def wait_for_room(self, size: int) -> bool:
        """Wait until ``size`` more bytes fit the budget; False once stalled too long."""
        ...

    def abort(self, code: int) -> None:
        """Reset the stream with ``code``, dropping whatever is still buffered."""
        ...


@dataclass(eq=False, slots=True)
class SubscriptionSlot:
    """One live subscribe stream of one identity."""

    identity: bytes
    task: asyncio.Task[None] | None
    replaced: bool = False


class SubscriptionRegistry:
    """Caps concurrent subscribe streams per identity, across connections.

    A new subscription beyond the cap ends the identity's *oldest* one (with
    a ``rate_limited`` event) rather than being refused: a client that
    reconnects after a network change would otherwise be locked out until
    its dead connection's idle timeout ends the old stream.
    """

    def __init__(self, per_identity: int) -> None:
        self._per_identity = per_identity
        self._slots: dict[bytes, list[SubscriptionSlot]] = {}

    def add(self, identity: bytes, task: asyncio.Task[None] | None) -> SubscriptionSlot:
        """Register a subscription; end the oldest ones over the cap."""
        slots = self._slots.setdefault(identity, [])
        slot = SubscriptionSlot(identity=identity, task=task)
        slots.append(slot)
        while len(slots) > self._per_identity:
            oldest = slots.pop(0)
            oldest.replaced = True
            if oldest.task is not None and not oldest.task.done():
                oldest.task.cancel()
        return slot

    def remove(self, slot: SubscriptionSlot) -> None:
        slots = self._slots.get(slot.identity)
        if slots is None:
            return
        if slot in slots:
            slots.remove(slot)
        if not slots:
            del self._slots[slot.identity]

    def count(self, identity: bytes) -> int:
        """Live subscriptions of ``identity``."""
        return len(self._slots.get(identity, ()))


async def _end_with(call: ServerCall, sink: EventSink, error: ServiceError) -> bool:
    """End the stream with a coded error event; reset it if even that cannot fit."""
    data = call.push(ErrorResponse.from_exception(error))
    if await sink.wait_for_room(len(data)):
        sink.send(data, end_stream=True)
        return True
    sink.abort(STREAM_STALLED)
    return False


async def pump_events(
    call: ServerCall, events: AsyncIterator[Event], sink: EventSink, slot: SubscriptionSlot
) -> bool:
    """Send Subscribed, then each event, each within the stream's budget.

    Returns False when the stream was reset because the subscriber stalled.
    Cancellation (the client ended the stream, shutdown) propagates, except
    when ``slot`` was replaced by a newer subscription: then the stream ends
    with a ``rate_limited`` event.
    """
    if not sink.send(call.respond(Subscribed()), end_stream=False):
        return True
    try:
        async for event in events:
            data = call.push(event)
            if not await sink.wait_for_room(len(data)):
                sink.abort(STREAM_STALLED)
                return False
            if not sink.send(data, end_stream=call.finished) or call.finished:
                return True
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not slot.replaced or task is None:
            raise
        task.uncancel()
        return await _end_with(
            call,
            sink,
            RateLimitedError("too many subscriptions for this identity; the oldest was ended"),
        )
    except Exception:  # noqa: BLE001 - a failing source ends this stream with a code, not a hang
        _log.exception("subscription source failed")
        return await _end_with(
            call, sink, InternalError("the subscription failed; subscribe again")
        )
    call.close()
    sink.send(b"", end_stream=True)
    return True
