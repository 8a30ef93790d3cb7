"""Credit on take: what a hostile server can make a calling client hold.

A small aioquic server on 127.0.0.1 answers a streaming call and then pushes
events as fast as QUIC lets it; the client's :class:`Transport` must grant
it credit only as its caller takes events, so what the client holds stays
within one stream window however much the server has to send. Credit must
also never leak: bytes nobody will take (an abandoned call, a reset stream,
a stream the client never opened) count as taken at once, or every later
call on the connection would stall.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.events import QuicEvent, StreamDataReceived
from test_quic import serve_locally

import qpq_proto as qp
from qpq_proto.errors import RemoteProtocolError
from qpq_proto.quic import BoundedQuicConnection, Transport, certificate_fingerprint
from qpq_proto.quic._transport import GRANT_STEP

ALPN = "qpq-test/1"
KIB = 1024
#: Small limits keep the windows small: a maximal message is 256 KiB.
LIMITS = qp.Limits(max_payload_bytes=192 * KIB, max_message_bytes=256 * KIB)
STREAM_WINDOW = LIMITS.max_message_bytes + GRANT_STEP
#: Events the flooding server has queued: far more than one window.
FLOOD_EVENTS = 120
FLOOD_PAYLOAD = 8 * KIB
SENDER = bytes(32)


def _envelope(seq: int, size: int) -> qp.Envelope:
    return qp.Envelope(seq, SENDER, bytes([seq % 256]) * size, seq)


def _maximal_messages() -> qp.Messages:
    """A Fetch answer whose framed size is within 2 KiB of max_message_bytes."""
    envelopes = [_envelope(1, LIMITS.max_payload_bytes)]
    room = LIMITS.max_message_bytes - len(qp.encode_response(qp.Messages(tuple(envelopes))))
    envelopes.append(_envelope(2, room - KIB))
    messages = qp.Messages(tuple(envelopes))
    size = len(qp.encode_response(messages))
    assert LIMITS.max_message_bytes - 2 * KIB <= size <= LIMITS.max_message_bytes
    return messages


class _Hostile(QuicConnectionProtocol):
    """Pushes far more events than a window holds, and misbehaves as the token says."""

    live: list[_Hostile]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: dict[int, qp.ServerCall] = {}
        #: Where the "cut" stream was reset.
        self.cut_at = 0
        _Hostile.live.append(self)

    def quic_event_received(self, event: QuicEvent) -> None:
        if not isinstance(event, StreamDataReceived):
            return
        call = self.calls.setdefault(event.stream_id, qp.ServerCall(LIMITS))
        for call_event in call.receive_data(event.data, event.end_stream):
            if isinstance(call_event, qp.RequestReceived):
                self._answer(event.stream_id, call, call_event.request)
        self.transmit()

    def _answer(self, stream_id: int, call: qp.ServerCall, request: qp.Request) -> None:
        send = self._quic.send_stream_data
        if isinstance(request.call, qp.Fetch):
            send(stream_id, call.respond(_maximal_messages()), end_stream=True)
            return
        if isinstance(request.call, qp.Health):
            if request.token == "intrude":
                # A stream the client never opened, as full as its credit allows.
                intruder = self._quic.get_next_available_stream_id()
                send(intruder, bytes(STREAM_WINDOW), end_stream=True)
            send(stream_id, call.respond(qp.HealthStatus("ok", "t", 1, "ok")), end_stream=True)
            return
        send(stream_id, call.respond(qp.Subscribed()), end_stream=False)
        if request.token == "flood":
            # All queued at once: aioquic sends what flow control allows.
            for seq in range(1, FLOOD_EVENTS + 1):
                send(stream_id, call.push(_envelope(seq, FLOOD_PAYLOAD)), end_stream=False)
            call.close()
            send(stream_id, b"", end_stream=True)
        elif request.token == "small-then-max":
            # Taking the small one earns less than half a window: a window of
            # max_message_bytes granted by halves would leave the large one stuck.
            send(stream_id, call.push(_envelope(1, 100 * KIB)), end_stream=False)
            send(stream_id, call.push(_envelope(2, LIMITS.max_payload_bytes)), end_stream=False)
            call.close()
            send(stream_id, b"", end_stream=True)
        elif request.token == "cut":
            # Half of a large event, then the stream is reset.
            event = call.push(_envelope(1, LIMITS.max_payload_bytes))
            send(stream_id, event[: len(event) // 2], end_stream=False)
            self.transmit()  # a reset drops what was not sent yet
            self.cut_at = self._quic._streams[stream_id].sender.highest_offset
            self._quic.reset_stream(stream_id, 7)

    def sent_on(self, stream_id: int) -> tuple[int, int]:
        """(bytes sent on ``stream_id``, bytes it still has to send)."""
        sender = self._quic._streams[stream_id].sender
        return sender.highest_offset, sender._buffer_stop - sender.highest_offset


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[int, str]]:
    """The hostile server's port and its certificate's pin."""
    _Hostile.live = []
    async with serve_locally(tmp_path, ALPN, _Hostile) as (port, certificate):
        yield port, certificate_fingerprint(certificate.der)


async def _open(server: tuple[int, str]) -> tuple[Transport, BoundedQuicConnection]:
    port, pin = server
    transport = await Transport.open(
        "127.0.0.1", port, alpn=ALPN, pin=pin, connect_timeout=5, limits=LIMITS
    )
    connection = transport.quic._quic
    assert isinstance(connection, BoundedQuicConnection)
    return transport, connection


async def _until(transport: Transport, condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds, checked after every QUIC event the client handles."""
    protocol = transport.quic
    handled = asyncio.Event()
    handle = protocol.quic_event_received

    def handle_and_tell(event: QuicEvent) -> None:
        handle(event)
        handled.set()

    protocol.quic_event_received = handle_and_tell
    try:
        async with asyncio.timeout(10):
            while not condition():
                handled.clear()
                await handled.wait()
    finally:
        del protocol.quic_event_received


async def _flooded(
    transport: Transport, connection: BoundedQuicConnection
) -> AsyncIterator[qp.Response | qp.Event]:
    """A flooding subscription, once the server sent all it could; nothing taken but its answer."""
    events = transport.stream(qp.Request(qp.Subscribe(), "flood"))
    assert await anext(events) == qp.Subscribed()
    (stream_id,) = transport.quic.streams
    quic_stream = connection._streams[stream_id]
    receiver = quic_stream.receiver
    # Until the server used all its credit and aioquic handed it all out
    # (or, unbounded, until the server sent everything).
    await _until(
        transport,
        lambda: (
            receiver.is_finished or receiver.starting_offset() >= quic_stream.max_stream_data_local
        ),
    )
    return events


async def test_a_flooding_server_is_held_to_one_stream_window(server: tuple[int, str]) -> None:
    transport, connection = await _open(server)
    try:
        events = await _flooded(transport, connection)
        (stream_id,) = transport.quic.streams
        stream = transport.quic.streams[stream_id]
        # What the client holds: its queue, a message still arriving, and
        # whatever aioquic holds below them; one stream window at most.
        event_bytes = len(qp.encode_event(_envelope(1, FLOOD_PAYLOAD)))
        assert stream.items.qsize() <= STREAM_WINDOW // event_bytes == 39
        held = connection.held_bytes
        assert STREAM_WINDOW - event_bytes <= held <= STREAM_WINDOW == 320 * KIB
        assert held == stream.queued + stream.pending  # aioquic holds nothing out of order
        # The server was stopped by flow control, with most of its events unsent.
        (hostile,) = _Hostile.live
        sent, unsent = hostile.sent_on(stream_id)
        assert sent == STREAM_WINDOW
        assert unsent > FLOOD_EVENTS * FLOOD_PAYLOAD // 2
        assert connection._streams[stream_id].max_stream_data_local == STREAM_WINDOW
        assert connection._local_max_data.value == 2 * STREAM_WINDOW
        # A caller that takes nothing does not starve another call.
        health = await transport.call(qp.Request(qp.Health()), answer_within=5)
        assert isinstance(health, qp.HealthStatus)
        assert connection.held_bytes == held
        assert hostile.sent_on(stream_id)[0] == STREAM_WINDOW
        await events.aclose()
    finally:
        await transport.close()


async def test_events_taken_one_by_one_all_arrive_in_order(server: tuple[int, str]) -> None:
    transport, connection = await _open(server)
    try:
        events = await _flooded(transport, connection)
        seqs: list[int] = []
        async with asyncio.timeout(30):
            async for event in events:
                assert isinstance(event, qp.Envelope)
                assert event.payload == bytes([event.seq % 256]) * FLOOD_PAYLOAD
                seqs.append(event.seq)
        assert seqs == list(range(1, FLOOD_EVENTS + 1))
        assert connection.held_bytes == 0
        assert transport.quic.streams == {}
    finally:
        await transport.close()


async def test_a_maximal_event_after_a_small_one_is_not_stuck(server: tuple[int, str]) -> None:
    transport, _connection = await _open(server)
    try:
        async with asyncio.timeout(10):
            streamed = [
                event
                async for event in transport.stream(qp.Request(qp.Subscribe(), "small-then-max"))
            ]
        assert streamed == [
            qp.Subscribed(),
            _envelope(1, 100 * KIB),
            _envelope(2, LIMITS.max_payload_bytes),
        ]
    finally:
        await transport.close()


async def test_bytes_nobody_takes_leave_no_credit_behind(server: tuple[int, str]) -> None:
    transport, connection = await _open(server)
    try:
        async with asyncio.timeout(30):
            # A call abandoned mid-answer, its window full.
            events = await _flooded(transport, connection)
            assert connection.held_bytes > STREAM_WINDOW // 2
            await events.aclose()
            assert transport.quic.streams == {}
            assert connection.held_bytes == 0

            # A stream the server reset inside a message: the part that
            # arrived counts as taken at once, before the caller looks.
            cut = transport.stream(qp.Request(qp.Subscribe(), "cut"))
            assert await anext(cut) == qp.Subscribed()
            (stream,) = transport.quic.streams.values()
            await _until(transport, lambda: not stream.items.empty())
            (hostile,) = _Hostile.live
            assert hostile.cut_at > len(qp.encode_response(qp.Subscribed())) + KIB
            assert connection.held_bytes == 0
            assert stream.pending == 0
            with pytest.raises(RemoteProtocolError, match="reset"):
                await anext(cut)

            # A stream the client never opened, filled to its credit.
            before = connection._local_max_data.used
            health = await transport.call(qp.Request(qp.Health(), "intrude"), answer_within=10)
            answer_bytes = len(qp.encode_response(health))
            # Until every byte arrived: on a loaded machine loopback drops
            # datagrams too, and bytes past a gap are held (rightly) until the
            # retransmission fills it. Credit leaked would hold them for ever,
            # and this wait would time out.
            await _until(
                transport,
                lambda: (
                    connection._local_max_data.used - before >= STREAM_WINDOW + answer_bytes
                    and connection.held_bytes == 0
                ),
            )

            # Nothing was left behind: a maximal answer still arrives.
            fetched = await transport.call(qp.Request(qp.Fetch(1), "t"), answer_within=10)
            assert fetched == _maximal_messages()
            assert connection.held_bytes == 0
    finally:
        await transport.close()
