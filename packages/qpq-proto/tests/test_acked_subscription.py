"""AckedSubscription: one acknowledgement in flight, answered by the next confirmation."""

from __future__ import annotations

import asyncio
from typing import Any

from proto_samples import ENVELOPE_1

from qpq_proto import Acked, Envelope, Event, Response
from qpq_proto.quic import AckedSubscription


class FakeStream:
    """What the server pushes, from a queue (None ends the stream); the acknowledgements written."""

    def __init__(self) -> None:
        self.pushed: asyncio.Queue[Response | Event | None] = asyncio.Queue()
        self.written: list[int] = []

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> Response | Event:
        item = await self.pushed.get()
        if item is None:
            raise StopAsyncIteration
        return item

    def ack(self, up_to_seq: int) -> bool:
        self.written.append(up_to_seq)
        return True


async def _reading(subscription: AckedSubscription) -> list[Envelope]:
    return [envelope async for envelope in subscription.envelopes()]


async def test_the_next_confirmation_answers_an_acknowledgement_whatever_it_covered() -> None:
    stream = FakeStream()
    fake: Any = stream
    subscription = AckedSubscription(fake)
    reader = asyncio.create_task(_reading(subscription))
    stream.pushed.put_nowait(ENVELOPE_1)
    waiting = asyncio.create_task(subscription.acknowledge(ENVELOPE_1.seq + 10))
    await asyncio.sleep(0)
    assert stream.written == [ENVELOPE_1.seq + 10]
    assert not waiting.done()  # one in flight until the server answers
    # The server covered less than asked (only what it had pushed): still the answer.
    stream.pushed.put_nowait(Acked(removed=1, up_to_seq=ENVELOPE_1.seq))
    assert await asyncio.wait_for(waiting, 5) is True
    assert subscription.confirmed == ENVELOPE_1.seq
    stream.pushed.put_nowait(None)
    assert await asyncio.wait_for(reader, 5) == [ENVELOPE_1]


async def test_an_acknowledgement_the_stream_ends_before_answering_is_false() -> None:
    stream = FakeStream()
    fake: Any = stream
    subscription = AckedSubscription(fake)
    reader = asyncio.create_task(_reading(subscription))
    waiting = asyncio.create_task(subscription.acknowledge(7))
    await asyncio.sleep(0)
    stream.pushed.put_nowait(None)
    assert await asyncio.wait_for(waiting, 5) is False
    assert await asyncio.wait_for(reader, 5) == []
