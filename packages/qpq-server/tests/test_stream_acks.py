"""Acknowledgements on the subscribe stream (SubscribeWithAcks, docs/protocol.md §2)."""

from __future__ import annotations

import asyncio

import pytest
from groups import build_group, members, send
from server_helpers import authed

from qpq_proto import (
    Ack,
    Acked,
    CallCompleted,
    ChallengeNonce,
    ClientCall,
    Envelope,
    ErrorCode,
    ErrorResponse,
    Event,
    Fetch,
    Request,
    Response,
    ResponseReceived,
    Subscribed,
    SubscribeWithAcks,
    encode_request,
)
from qpq_proto.quic import AckingStream
from qpq_server.testing import CallClient, RunningServer

_U63 = 2**63 - 1


async def _next(stream: AckingStream) -> Response | Event:
    return await asyncio.wait_for(anext(stream), 10)


async def _envelopes(stream: AckingStream, count: int) -> list[Envelope]:
    got = [await _next(stream) for _ in range(count)]
    assert all(isinstance(e, Envelope) for e in got), got
    return got  # type: ignore[return-value]


def _open(client: CallClient) -> AckingStream:
    return client.transport.open_acking(Request(call=SubscribeWithAcks(), token=client.token))


async def _queued(client: CallClient) -> list[int]:
    return [e.seq for e in (await client.call(Fetch(limit=100))).messages]


async def test_the_challenge_announces_stream_acks(server: RunningServer) -> None:
    async with server.connect() as client:
        from qpq_proto import Challenge

        nonce = await client.call(Challenge())
        assert isinstance(nonce, ChallengeNonce)
        assert nonce.stream_acks is True


async def test_acks_written_on_the_stream_delete_and_are_confirmed(
    server: RunningServer,
) -> None:
    reader, writer = members(2)
    group_id = await build_group(server, writer, reader)
    async with authed(server, writer.identity) as writer_client:
        for text in (b"one", b"two", b"three"):
            await send(writer_client, writer, group_id, text)
        async with authed(server, reader.identity) as client:
            stream = _open(client)
            try:
                assert await _next(stream) == Subscribed()
                _first, second, third = await _envelopes(stream, 3)
                assert stream.ack(second.seq)
                assert await _next(stream) == Acked(removed=2, up_to_seq=second.seq)
                assert await _queued(client) == [third.seq]
                # The stream goes on: a new message, acknowledged in turn.
                await send(writer_client, writer, group_id, b"four")
                (fourth,) = await _envelopes(stream, 1)
                assert stream.ack(fourth.seq)
                assert await _next(stream) == Acked(removed=2, up_to_seq=fourth.seq)
                assert await _queued(client) == []
            finally:
                await stream.aclose()


async def test_an_ack_beyond_what_was_pushed_deletes_only_what_was_pushed(
    server: RunningServer,
) -> None:
    # A client cannot acknowledge messages it was never sent on its stream:
    # what is queued after its acknowledgement stays queued for it.
    reader, writer = members(2)
    group_id = await build_group(server, writer, reader)
    async with authed(server, writer.identity) as writer_client:
        await send(writer_client, writer, group_id, b"pushed")
        async with authed(server, reader.identity) as client:
            stream = _open(client)
            try:
                assert await _next(stream) == Subscribed()
                (pushed,) = await _envelopes(stream, 1)
                assert stream.ack(_U63)
                assert await _next(stream) == Acked(removed=1, up_to_seq=pushed.seq)
                await send(writer_client, writer, group_id, b"later")
                (later,) = await _envelopes(stream, 1)
                assert later.seq > pushed.seq
                # The earlier acknowledgement did not cover it: it is still queued.
                assert await _queued(client) == [later.seq]
            finally:
                await stream.aclose()


async def test_the_clients_fin_ends_the_subscription(server: RunningServer) -> None:
    reader, writer = members(2)
    group_id = await build_group(server, writer, reader)
    async with (
        authed(server, writer.identity) as writer_client,
        authed(server, reader.identity) as client,
    ):
        await send(writer_client, writer, group_id, b"kept")
        request = Request(call=SubscribeWithAcks(), token=client.token)
        call = ClientCall(request)
        # The request and an acknowledgement, then FIN: the server answers,
        # applies nothing it did not push, and ends its side.
        raw = call.request_bytes() + call.ack_bytes(_U63)
        answer = await asyncio.wait_for(client.raw(raw, end_stream=True), 10)
        events = ClientCall(request).receive_data(answer, end_stream=True)
        assert isinstance(events[0], ResponseReceived)
        assert events[0].response == Subscribed()
        assert isinstance(events[-1], CallCompleted)
        assert len(await _queued(client)) == 1  # nothing was acknowledged


async def test_anything_but_acks_on_the_stream_ends_it_with_an_error(
    server: RunningServer,
) -> None:
    reader, writer = members(2)
    await build_group(server, writer, reader)
    async with authed(server, reader.identity) as client:
        for after in (b"\xff" * 16, encode_request(Request(call=Fetch(limit=1), token=""))):
            stream = _open(client)
            try:
                assert await _next(stream) == Subscribed()
                # Written after the answer, as a client would write an acknowledgement.
                assert client.transport.quic.send_more(stream._stream_id, after, False)
                ended = await _next(stream)
                assert isinstance(ended, ErrorResponse)
                assert ended.code is ErrorCode.MALFORMED_REQUEST
                with pytest.raises(StopAsyncIteration):
                    await _next(stream)
            finally:
                await stream.aclose()
        # The connection serves calls as before.
        assert await _queued(client) == []
        await client.call(Ack(up_to_seq=1))
