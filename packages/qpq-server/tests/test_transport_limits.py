"""What one peer may make the server hold: subscribe backlogs, unfinished requests, connections."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from groups import build_group, members, plaintexts, process, send
from server_helpers import authed

import qpq_core
from qpq_proto import (
    Envelope,
    ErrorCode,
    ErrorResponse,
    Fetch,
    Health,
    Limits,
    decode_response,
)
from qpq_proto.errors import RateLimitedError, StreamResetError
from qpq_server._subscribe import STREAM_STALLED
from qpq_server.testing import RunningServer, ServerProcess

LIMITED_ENV = {
    "QPQ_RATE_PER_SECOND": "100000",
    "QPQ_RATE_BURST": "100000",
    "QPQ_SUBSCRIBE_BUFFER_BYTES": str(256 * 1024),
    "QPQ_SUBSCRIBE_STALL_SECONDS": "1",
    "QPQ_MAX_SUBSCRIPTIONS_PER_IDENTITY": "2",
    "QPQ_CONNECTION_BUFFER_BYTES": str(1024 * 1024),
    "QPQ_REQUEST_TIMEOUT_SECONDS": "2",
}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with ServerProcess(tmp_path_factory.mktemp("limited"), extra_env=LIMITED_ENV) as running:
        yield running


def _code(answer: bytes) -> ErrorCode:
    response = decode_response(answer)
    assert isinstance(response, ErrorResponse)
    return response.code


def _grant_no_more_credit(protocol: Any) -> None:
    # A hostile subscriber: it acknowledges packets but never raises
    # MAX_STREAM_DATA beyond its first window. aioquic raises it on its own
    # as data arrives, so the test switches that off on its own connection.
    protocol._quic._write_stream_limits = lambda *args, **kwargs: None


async def _drain(events: AsyncIterator[Envelope], into: list[Envelope]) -> None:
    async for event in events:
        into.append(event)


async def test_a_subscriber_that_takes_no_data_is_reset_not_buffered(
    limited: RunningServer,
) -> None:
    reader, writer = members(2)
    group_id = await build_group(limited, writer, reader)
    small_window = Limits(max_payload_bytes=64 * 1024, max_message_bytes=128 * 1024)
    texts = [os.urandom(60 * 1024) for _ in range(20)]  # 1.2 MiB: far over the 256 KiB budget
    async with limited.connect(limits=small_window) as stalled:
        await stalled.authenticate(reader.identity)
        _grant_no_more_credit(stalled.protocol)
        async with stalled.subscribe() as events, authed(limited, writer.identity) as sender:
            payloads = [await send(sender, writer, group_id, text) for text in texts]
            received: list[Envelope] = []
            with pytest.raises(StreamResetError) as reset:
                await asyncio.wait_for(_drain(events, received), 20)
            assert reset.value.error_code == STREAM_STALLED
            assert len(received) < len(payloads)
        # The connection itself is fine, and nothing was lost: delivery is at-least-once.
        async with authed(limited, reader.identity) as fresh:
            queued = await fresh.call(Fetch(limit=100))
            assert [m.payload for m in queued.messages] == payloads
            assert plaintexts(process(reader, queued.messages)) == texts


async def test_a_subscription_over_the_per_identity_cap_ends_the_oldest(
    limited: RunningServer,
) -> None:
    subscriber, peer = members(2)
    group_id = await build_group(limited, peer, subscriber)
    async with (
        authed(limited, subscriber.identity) as client,
        authed(limited, peer.identity) as peer_client,
        client.subscribe() as first,
        client.subscribe() as second,
        client.subscribe() as third,
    ):
        with pytest.raises(RateLimitedError) as ended:
            await asyncio.wait_for(anext(first), 10)
        assert ended.value.code is ErrorCode.RATE_LIMITED
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(first), 10)
        payload = await send(peer_client, peer, group_id, b"still served")
        for events in (second, third):
            delivered = await asyncio.wait_for(anext(events), 10)
            assert isinstance(delivered, Envelope)
            assert delivered.payload == payload


async def test_unfinished_requests_are_capped_per_connection_and_cut_off_in_time(
    limited: RunningServer,
) -> None:
    # Two requests that each declare 900 KiB (under the 8 MiB message limit),
    # each left open after 700 KiB: together over the connection's 1 MiB budget
    # (an authenticated one's: before Authenticate the budget is far smaller).
    header = struct.pack("<II", 0, (900 * 1024) // 8)
    partial = header + bytes(700 * 1024)
    async with authed(limited, qpq_core.Identity.generate()) as client:
        answers = await asyncio.wait_for(
            asyncio.gather(
                client.raw(partial, end_stream=False), client.raw(partial, end_stream=False)
            ),
            20,
        )
        # One is refused when the budget runs out; the other, never finished,
        # is cut off at the request deadline.
        assert sorted(_code(answer) for answer in answers) == [
            ErrorCode.PAYLOAD_TOO_LARGE,
            ErrorCode.MALFORMED_REQUEST,
        ]
        assert (await client.call(Health())).status == "ok"


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"QPQ_MAX_CONNECTIONS_PER_ADDRESS": "2"}, "too many connections from this address"),
        ({"QPQ_MAX_CONNECTIONS": "2"}, "too many connections to this server"),
    ],
)
async def test_a_connection_over_a_cap_is_closed_with_a_reason(
    tmp_path: Any, env: dict[str, str], reason: str
) -> None:
    with ServerProcess(tmp_path, extra_env=env) as server:
        async with server.connect() as one, server.connect() as two:
            async with server.connect() as three:
                await asyncio.wait_for(three.wait_closed(), 10)
                assert three.closed_reason == reason
            assert (await one.call(Health())).status == "ok"
            assert (await two.call(Health())).status == "ok"
