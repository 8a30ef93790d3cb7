"""BoundedQuicConnection in memory: a hostile aioquic client against a bounded server.

The client places STREAM data wherever a test wants it (as a peer that does
not follow aioquic's sender can), datagrams are handed across by hand and
time is passed in, so nothing here waits or opens a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
)
from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import Epoch
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from test_quic import make_certificate

from qpq_proto.quic import BoundedQuicConnection, ReceiveBudget
from qpq_proto.quic._bounded import OVER_BUDGET

ALPN = "qpq-test/1"
CLIENT_ADDR = ("127.0.0.1", 40000)
SERVER_ADDR = ("127.0.0.1", 7000)
KIB = 1024


def _server_configuration() -> QuicConfiguration:
    certificate = make_certificate()
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    configuration.certificate = x509.load_pem_x509_certificate(certificate.pem.encode())
    configuration.private_key = serialization.load_pem_private_key(
        certificate.key_pem.encode(), password=None
    )
    return configuration


SERVER_CONFIGURATION = _server_configuration()


@dataclass
class Pair:
    """A client and a server connection, wired together by hand."""

    client: QuicConnection
    server: QuicConnection
    now: float = 1.0
    server_events: list[QuicEvent] = field(default_factory=list)
    client_events: list[QuicEvent] = field(default_factory=list)
    take: bool = True

    def exchange(self, rounds: int = 6) -> None:
        """Hand datagrams across until both sides are quiet (or ``rounds`` passes)."""
        for _ in range(rounds):
            self.now += 0.001
            moved = False
            for data, _addr in self.client.datagrams_to_send(now=self.now):
                self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
                moved = True
            if self.take:
                self.drain_server()
            for data, _addr in self.server.datagrams_to_send(now=self.now):
                self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
                moved = True
            while (event := self.client.next_event()) is not None:
                self.client_events.append(event)
            if not moved:
                return

    def drain_server(self) -> None:
        while (event := self.server.next_event()) is not None:
            self.server_events.append(event)

    def server_closed(self) -> ConnectionTerminated | None:
        self.now += 10  # past any draining period
        self.server.handle_timer(now=self.now)
        self.drain_server()
        closes = [e for e in self.server_events if isinstance(e, ConnectionTerminated)]
        return closes[0] if closes else None

    def client_saw_close(self) -> ConnectionTerminated | None:
        closes = [e for e in self.client_events if isinstance(e, ConnectionTerminated)]
        if closes:
            return closes[0]
        self.now += 10
        self.client.handle_timer(now=self.now)
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
        closes = [e for e in self.client_events if isinstance(e, ConnectionTerminated)]
        return closes[0] if closes else None

    def place(self, stream_id: int, offset: int, data: bytes, *, fin: bool = False) -> None:
        """Queue ``data`` at ``offset`` of ``stream_id``, whatever came before it."""
        stream = self.client._get_or_create_stream_for_send(stream_id)
        sender = stream.sender
        sender._buffer = bytearray()
        sender._buffer_start = sender._buffer_stop = offset
        # The client's own connection-level accounting counts only these bytes.
        sender.highest_offset = max(sender.highest_offset, offset)
        # Let the crafted frame leave even past the credit the server gave.
        stream.max_stream_data_remote = max(stream.max_stream_data_remote, offset + len(data))
        self.client._remote_max_data = max(
            self.client._remote_max_data, self.client._remote_max_data_used + len(data)
        )
        sender.write(data, end_stream=fin)

    def stream_credit(self, stream_id: int) -> int:
        return int(self.client._streams[stream_id].max_stream_data_remote)

    def connection_credit(self) -> int:
        return int(self.client._remote_max_data)


def connect(server: QuicConnection) -> Pair:
    client = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=0)
    )
    # The server would take this from the client's first Initial (RFC 9000 section 7.3).
    server._original_destination_connection_id = client._original_destination_connection_id
    pair = Pair(client=client, server=server)
    client.connect(SERVER_ADDR, now=pair.now)
    pair.exchange(rounds=10)
    assert any(isinstance(e, HandshakeCompleted) for e in pair.client_events)
    return pair


def bounded(
    stream_window: int = 64 * KIB,
    connection_window: int = 128 * KIB,
    budget: ReceiveBudget | None = None,
    max_fragments: int = 256,
) -> BoundedQuicConnection:
    return BoundedQuicConnection(
        configuration=SERVER_CONFIGURATION,
        stream_window=stream_window,
        connection_window=connection_window,
        budget=budget,
        max_fragments=max_fragments,
        original_destination_connection_id=b"\x01" * 8,
    )


def test_plain_aioquic_doubles_its_windows_for_bytes_nobody_read() -> None:
    # The behaviour the bounded connection exists for (docs/aioquic-flow-control.md).
    plain = QuicConnection(
        configuration=SERVER_CONFIGURATION,
        original_destination_connection_id=b"\x01" * 8,
    )
    plain._local_max_data.value = plain._local_max_data.sent = 128 * KIB
    plain._local_max_stream_data_bidi_remote = 64 * KIB
    pair = connect(plain)
    pair.take = False
    pair.place(0, 64 * KIB - 1, b"x")
    pair.exchange()
    assert pair.stream_credit(0) == 128 * KIB  # doubled, though nothing was read


def test_credit_does_not_grow_for_bytes_that_were_not_taken() -> None:
    pair = connect(bounded())
    pair.place(0, 64 * KIB - 1, b"x")
    pair.exchange()
    assert pair.stream_credit(0) == 64 * KIB
    assert pair.connection_credit() == 128 * KIB
    server = pair.server
    assert isinstance(server, BoundedQuicConnection)
    assert server.held_bytes == 64 * KIB


def test_sending_past_the_credit_is_a_flow_control_error() -> None:
    pair = connect(bounded())
    pair.place(0, 64 * KIB - 1, b"x")
    pair.exchange()
    pair.place(0, 64 * KIB, b"y")  # one byte past the stream's credit
    pair.exchange()
    closed = pair.client_saw_close()
    assert closed is not None
    assert closed.error_code == QuicErrorCode.FLOW_CONTROL_ERROR


def test_taken_data_extends_credit_by_the_window() -> None:
    pair = connect(bounded())
    payload = bytes(1024 * KIB)
    pair.client.send_stream_data(0, payload, end_stream=True)
    for _ in range(200):
        pair.exchange()
    received = b"".join(
        e.data
        for e in pair.server_events
        if getattr(e, "stream_id", None) == 0 and hasattr(e, "data")
    )
    assert received == payload


def test_a_peer_cannot_run_ahead_of_an_application_that_takes_nothing() -> None:
    pair = connect(bounded())
    pair.take = False
    pair.client.send_stream_data(0, bytes(1024 * KIB), end_stream=True)
    for _ in range(50):
        pair.exchange()
    server = pair.server
    assert isinstance(server, BoundedQuicConnection)
    assert server._local_max_data.used <= 64 * KIB  # the stream window
    assert pair.stream_credit(0) == 64 * KIB


def test_a_larger_connection_window_is_granted_once_set() -> None:
    server = bounded(stream_window=1024 * KIB, connection_window=16 * KIB)
    pair = connect(server)
    assert pair.connection_credit() == 16 * KIB
    server.set_connection_window(512 * KIB)
    pair.exchange()
    assert pair.connection_credit() == 512 * KIB
    assert server.connection_window == 512 * KIB
    with pytest.raises(ValueError, match="positive"):
        server.set_connection_window(0)


def test_a_reset_stream_returns_its_credit() -> None:
    server = bounded(stream_window=64 * KIB, connection_window=64 * KIB)
    pair = connect(server)
    pair.place(0, 64 * KIB - 1, b"x")
    pair.exchange()
    assert server.held_bytes == 64 * KIB
    pair.client.reset_stream(0, 1)
    pair.exchange()
    assert server.held_bytes == 0
    pair.exchange()
    assert pair.connection_credit() == 128 * KIB  # the connection may carry on


def taking(stream_window: int = 64 * KIB, grant_step: int = 16 * KIB) -> BoundedQuicConnection:
    """A connection whose owner takes data itself (take_on_delivery=False)."""
    return BoundedQuicConnection(
        configuration=SERVER_CONFIGURATION,
        stream_window=stream_window,
        connection_window=2 * stream_window,
        take_on_delivery=False,
        grant_step=grant_step,
        original_destination_connection_id=b"\x01" * 8,
    )


def test_data_handed_out_earns_credit_only_once_taken() -> None:
    server = taking()
    pair = connect(server)
    pair.client.send_stream_data(0, bytes(256 * KIB), end_stream=True)
    for _ in range(20):
        pair.exchange()
    delivered = sum(len(getattr(e, "data", b"")) for e in pair.server_events)
    assert delivered == 64 * KIB  # handed out, but not taken: no more credit
    assert server.held_bytes == 64 * KIB
    assert pair.stream_credit(0) == 64 * KIB
    assert not server.take(0, 16 * KIB - 1)  # less than a grant step: not due yet
    assert server.take(0, 1)  # a grant step: the owner should transmit
    pair.exchange()
    assert pair.stream_credit(0) == 80 * KIB
    assert pair.connection_credit() == 144 * KIB
    assert server.held_bytes == 64 * KIB  # the peer filled the new credit at once


def test_a_reset_returns_the_credit_of_what_was_never_handed_out() -> None:
    server = taking()
    pair = connect(server)
    pair.client.send_stream_data(0, bytes(32 * KIB))
    for _ in range(5):
        pair.exchange()
    pair.place(0, 60 * KIB, b"x")  # out of order: never handed out
    pair.exchange()
    assert server.held_bytes == 60 * KIB + 1
    pair.client.reset_stream(0, 1)
    pair.exchange()
    assert server.held_bytes == 32 * KIB  # handed out: the owner's to take
    server.take(0, 32 * KIB)
    assert server.held_bytes == 0


def test_take_and_grant_step_are_checked() -> None:
    with pytest.raises(ValueError, match="take_on_delivery"):
        bounded().take(0, 1)
    with pytest.raises(ValueError, match="take_on_delivery"):
        taking().take(0, -1)
    with pytest.raises(ValueError, match="grant_step"):
        taking(stream_window=16 * KIB, grant_step=32 * KIB)
    with pytest.raises(ValueError, match="grant step"):
        taking().set_connection_window(8 * KIB)
    assert taking().stream_window == 64 * KIB


def test_a_stream_scattered_into_too_many_pieces_closes_the_connection() -> None:
    pair = connect(bounded(max_fragments=16))
    for piece in range(17):
        pair.place(0, 2 + 2 * piece, b"x")
        pair.exchange()
    closed = pair.client_saw_close()
    assert closed is not None
    assert closed.error_code == QuicErrorCode.FLOW_CONTROL_ERROR
    assert "out-of-order pieces" in closed.reason_phrase


def test_a_shared_budget_closes_the_largest_holder() -> None:
    budget = ReceiveBudget(100 * KIB)
    big = connect(bounded(budget=budget))
    small = connect(bounded(budget=budget))
    big.place(0, 60 * KIB - 1, b"x")
    big.exchange()
    assert budget.total == 60 * KIB
    assert not budget.reserve(41 * KIB)  # the application's bytes count too
    assert budget.reserve(10 * KIB)
    budget.release(10 * KIB)
    woken: list[bool] = []
    server = big.server
    assert isinstance(server, BoundedQuicConnection)
    server.wake = lambda: woken.append(True)
    small.place(0, 50 * KIB - 1, b"x")
    small.exchange()
    assert budget.total == 50 * KIB
    assert woken == [True]  # its owner is told to send the close
    big.exchange()
    closed = big.client_saw_close()
    assert closed is not None
    assert closed.error_code == QuicErrorCode.FLOW_CONTROL_ERROR
    assert closed.reason_phrase == OVER_BUDGET
    assert all(len(stream.receiver._buffer) == 0 for stream in server._streams.values())
    assert big.server_closed() is not None
    small.exchange()
    assert not [e for e in small.client_events if isinstance(e, ConnectionTerminated)]


def test_adopt_bounds_a_fresh_connection_only() -> None:
    fresh = QuicConnection(
        configuration=SERVER_CONFIGURATION, original_destination_connection_id=b"\x01" * 8
    )
    adopted = BoundedQuicConnection.adopt(fresh, stream_window=64 * KIB, connection_window=64 * KIB)
    assert adopted is fresh
    pair = connect(adopted)
    pair.place(0, 64 * KIB - 1, b"x")
    pair.exchange()
    assert pair.stream_credit(0) == 64 * KIB
    with pytest.raises(ValueError, match="plain"):
        BoundedQuicConnection.adopt(adopted, stream_window=1, connection_window=1)
    used = QuicConnection(
        configuration=SERVER_CONFIGURATION, original_destination_connection_id=b"\x01" * 8
    )
    connect(used).place(0, 0, b"x")
    used._local_max_data.used = 1
    with pytest.raises(ValueError, match="before"):
        BoundedQuicConnection.adopt(used, stream_window=1, connection_window=1)
    with pytest.raises(ValueError, match="positive"):
        bounded(stream_window=0)
    with pytest.raises(ValueError, match="positive"):
        ReceiveBudget(0)


def test_the_handshake_buffers_go_once_their_keys_are_discarded() -> None:
    # aioquic keeps a 16 KiB TLS output buffer per epoch for the connection's
    # life; nothing is sent in the Initial or Handshake epoch once its keys
    # are gone (RFC 9001 section 4.9), and an idle server connection is
    # mostly those buffers.
    plain = connect(
        QuicConnection(
            configuration=SERVER_CONFIGURATION, original_destination_connection_id=b"\x01" * 8
        )
    )
    assert set(plain.server._crypto_buffers) == {Epoch.INITIAL, Epoch.HANDSHAKE, Epoch.ONE_RTT}
    pair = connect(bounded())
    assert set(pair.server._crypto_buffers) == {Epoch.ONE_RTT}
    client = BoundedQuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=0),
        stream_window=64 * KIB,
        connection_window=128 * KIB,
    )
    both = Pair(client=client, server=bounded())
    both.server._original_destination_connection_id = client._original_destination_connection_id
    client.connect(SERVER_ADDR, now=both.now)
    both.exchange(rounds=10)
    assert any(isinstance(e, HandshakeCompleted) for e in both.client_events)
    assert set(client._crypto_buffers) == {Epoch.ONE_RTT}
    # Both ends still carry data, and the server still answers.
    both.place(0, 0, b"hello", fin=True)
    both.exchange()
    received = [e for e in both.server_events if isinstance(e, StreamDataReceived)]
    assert b"".join(e.data for e in received) == b"hello"
    both.server.send_stream_data(0, b"back", end_stream=True)
    both.exchange()
    answered = [e for e in both.client_events if isinstance(e, StreamDataReceived)]
    assert b"".join(e.data for e in answered) == b"back"
    assert both.server_closed() is None
