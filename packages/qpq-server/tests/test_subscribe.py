"""The subscribe pump in memory: failing sources, stalled subscribers, replaced subscriptions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from qpq_proto import (
    CallCompleted,
    ClientCall,
    Envelope,
    ErrorCode,
    ErrorResponse,
    Event,
    EventReceived,
    Request,
    RequestReceived,
    ResponseReceived,
    ServerCall,
    Subscribe,
    Subscribed,
    encode_request,
)
from qpq_server._subscribe import STREAM_STALLED, SubscriptionRegistry, pump_events

_REQUEST = Request(call=Subscribe(), token="t")


class FakeSink:
    """Records what the pump writes; ``room`` says whether the stream has budget left."""

    def __init__(self, *, room: bool = True) -> None:
        self.chunks: list[bytes] = []
        self.ended = False
        self.aborted: int | None = None
        self.room = room

    def send(self, data: bytes, end_stream: bool) -> bool:
        self.chunks.append(data)
        self.ended = self.ended or end_stream
        return True

    async def wait_for_room(self, size: int) -> bool:
        return self.room

    def abort(self, code: int) -> None:
        self.aborted = code

    def decoded(self) -> list[object]:
        """What a client reading the stream sees."""
        client = ClientCall(_REQUEST)
        return list(client.receive_data(b"".join(self.chunks), self.ended))


def _handling_call() -> ServerCall:
    call = ServerCall()
    events = call.receive_data(encode_request(_REQUEST), end_stream=True)
    assert isinstance(events[0], RequestReceived)
    return call


def _envelope(seq: int) -> Envelope:
    return Envelope(seq=seq, sender=bytes(32), payload=b"m%d" % seq, enqueued_at_ms=1)


async def test_a_failing_source_ends_the_stream_with_internal() -> None:
    async def failing() -> AsyncIterator[Event]:
        yield _envelope(1)
        raise OSError("disk I/O error")  # e.g. the storage failing mid-subscription

    sink = FakeSink()
    registry = SubscriptionRegistry(4)
    slot = registry.add(b"k" * 32, asyncio.current_task())
    assert await pump_events(_handling_call(), failing(), sink, slot)
    events = sink.decoded()
    assert isinstance(events[0], ResponseReceived)
    assert isinstance(events[0].response, Subscribed)
    assert isinstance(events[1], EventReceived)
    assert events[1].event == _envelope(1)
    assert isinstance(events[2], EventReceived)
    assert isinstance(events[2].event, ErrorResponse)
    assert events[2].event.code is ErrorCode.INTERNAL
    assert isinstance(events[-1], CallCompleted)  # ended cleanly: the client does not hang
    assert sink.ended


async def test_a_stalled_subscriber_is_reset_instead_of_buffered() -> None:
    async def endless() -> AsyncIterator[Event]:
        seq = 0
        while True:
            seq += 1
            yield _envelope(seq)

    sink = FakeSink(room=False)
    slot = SubscriptionRegistry(4).add(b"k" * 32, asyncio.current_task())
    assert not await pump_events(_handling_call(), endless(), sink, slot)
    assert sink.aborted == STREAM_STALLED
    assert len(sink.chunks) == 1  # Subscribed only; no event was buffered


async def test_a_new_subscription_over_the_cap_ends_the_oldest() -> None:
    registry = SubscriptionRegistry(1)
    identity = b"k" * 32
    release = asyncio.Event()

    async def quiet() -> AsyncIterator[Event]:
        await release.wait()
        yield _envelope(1)

    started = asyncio.Event()
    old_sink, new_sink = FakeSink(), FakeSink()

    async def run(sink: FakeSink) -> bool:
        slot = registry.add(identity, asyncio.current_task())
        started.set()
        try:
            return await pump_events(_handling_call(), quiet(), sink, slot)
        finally:
            registry.remove(slot)

    old = asyncio.create_task(run(old_sink))
    await started.wait()
    new = asyncio.create_task(run(new_sink))
    assert await old  # ended, not cancelled
    events = old_sink.decoded()
    assert isinstance(events[-2], EventReceived)
    assert isinstance(events[-2].event, ErrorResponse)
    assert events[-2].event.code is ErrorCode.RATE_LIMITED
    assert isinstance(events[-1], CallCompleted)
    release.set()
    assert await new
    assert registry.count(identity) == 0
    assert [e.event for e in new_sink.decoded() if isinstance(e, EventReceived)] == [_envelope(1)]
