"""A follower reads ahead of what it processed by one batch at most.

The transport grants the server credit only as events are taken from it, so
whatever the follower takes without processing is what a server pushing
faster than it processes can make it hold: one batch, by count or by bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from qpq_client import _receive
from qpq_client._follow import _READ_AHEAD_BYTES, _Pushed
from qpq_proto import Envelope

MIB = 1024 * 1024


class _Flood:
    """A subscription with 1000 envelopes ready, counting those taken from it."""

    def __init__(self, payload_bytes: int) -> None:
        self.taken = 0
        self._payload = bytes(payload_bytes)

    async def pushed(self) -> AsyncIterator[Envelope]:
        while self.taken < 1000:
            self.taken += 1
            yield Envelope(self.taken, bytes(32), self._payload, self.taken)


async def test_reading_stops_at_a_batch_of_envelopes_until_it_is_taken() -> None:
    server = _Flood(payload_bytes=100)
    inbox = _Pushed(server.pushed())
    never = asyncio.Event()
    try:
        for batch_number in range(3):
            batch = await inbox.next_batch(never, within=5)
            assert batch is not None
            first = batch_number * _receive.FETCH_LIMIT + 1
            assert [envelope.seq for envelope in batch] == list(
                range(first, first + _receive.FETCH_LIMIT)
            )
            # The reader stopped once a batch waited, and stays stopped until
            # that batch is taken.
            assert server.taken == (batch_number + 1) * _receive.FETCH_LIMIT
    finally:
        await inbox.close()


async def test_reading_stops_at_a_batch_of_payload_bytes() -> None:
    server = _Flood(payload_bytes=MIB)
    inbox = _Pushed(server.pushed())
    try:
        batch = await inbox.next_batch(asyncio.Event(), within=5)
        assert batch is not None
        assert len(batch) == server.taken == _READ_AHEAD_BYTES // MIB == 8
    finally:
        await inbox.close()
