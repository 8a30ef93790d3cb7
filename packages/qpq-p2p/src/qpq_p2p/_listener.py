"""The listening side: aioquic in, qpq-proto's ``ServerCall`` and the gate, bytes out.

It makes no protocol decisions: each client-initiated bidirectional stream
gets a :class:`qpq_proto.ServerCall`, a complete request goes to the
connection's :class:`~qpq_p2p._proof.ListenerGate`, and what the gate
returns is sent back; a message the gate admits goes to the host's
receiver first and is answered ``Done`` only once the receiver returned
(the host persisted it).

Anyone who finds the port can connect, so what a connection can make the
listener hold is bounded before it proved a member's identity, as the
server bounds it (docs/aioquic-flow-control.md):

- QUIC receive buffers: every connection is a
  :class:`qpq_proto.quic.BoundedQuicConnection` granting credit only as
  data is taken, ``unauthenticated_buffer_bytes`` per connection until its
  proof, ``receive_window_bytes`` after; all connections share one
  :class:`~qpq_proto.quic.ReceiveBudget`;
- request bytes buffered across a connection's unfinished requests: the
  same small cap before the proof, one whole message after; the stream
  that would exceed it is answered ``payload_too_large``, and one that
  would exceed the shared budget ``unavailable``;
- time: a connection that has not proven an identity
  ``authenticate_timeout_seconds`` after it opened is closed;
- connections: ``max_connections`` in all, ``max_connections_per_address``
  from one address; one over a cap is closed once its handshake completes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from qpq_p2p._aioquic import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicConfiguration,
    QuicConnectionProtocol,
    QuicEvent,
    QuicServer,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from qpq_p2p._delivery import DirectMessage
from qpq_p2p._hub import ListenerHub
from qpq_proto import (
    PEER_ALPN,
    CallState,
    ErrorResponse,
    Request,
    RequestReceived,
    RequestRejected,
    Response,
    ServerCall,
)
from qpq_proto.errors import PayloadTooLargeError, ServiceError, UnavailableError
from qpq_proto.quic import BoundedQuicConnection

__all__ = ["PeerListener", "start_listener"]

#: Application error code on STOP_SENDING for a stream whose request was refused.
STREAM_REJECTED = 0x10
#: Application error codes when a connection is closed.
CLOSE_SHUTDOWN = 0x0
CLOSE_BAD_ALPN = 0x11
CLOSE_TOO_MANY = 0x13
CLOSE_UNAUTHENTICATED = 0x14


@dataclass(slots=True)
class _Stream:
    # None once the request was refused: its buffered bytes are dropped with it.
    call: ServerCall | None
    task: asyncio.Task[None] | None = None
    peer_done: bool = False
    stopped: bool = False
    #: Request bytes held for this stream's unfinished request.
    buffered: int = 0

    def done(self) -> bool:
        answered = self.call is None or self.call.finished or self.stopped
        idle = self.task is None or self.task.done()
        return answered and self.peer_done and idle

    def receiving(self) -> bool:
        return self.call is not None and self.call.state is CallState.WAITING


class _PeerProtocol(QuicConnectionProtocol):
    """One incoming connection from another peer."""

    def __init__(self, *args: Any, hub: ListenerHub, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hub = hub
        config = hub.config
        self._limits = config.limits
        # Before its first datagram: the peer learns these windows in the handshake.
        self._bounded = BoundedQuicConnection.adopt(
            self._quic,
            stream_window=config.limits.max_message_bytes,
            connection_window=config.unauthenticated_buffer_bytes,
            budget=hub.budget,
        )
        self._bounded.wake = self.transmit
        self._gate = hub.gate()
        self._streams: dict[int, _Stream] = {}
        self._open = True
        self._receiving = False
        self._flush_pending = False
        self._request_bytes = 0
        self._request_budget = config.unauthenticated_buffer_bytes
        self._address: str | None = None
        self._refusal: str | None = None
        self._proven = False
        self._deadline: asyncio.TimerHandle | None = self._loop.call_later(
            config.authenticate_timeout_seconds, self._authenticate_timed_out
        )
        hub.protocols.add(self)
        if not hub.accepting:
            self.close_with_reason(CLOSE_SHUTDOWN, "this peer is shutting down")

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self._address is None and self._refusal is None:
            address = str(addr[0])
            self._refusal = self._hub.admit(address)
            if self._refusal is None:
                self._address = address
        self._receiving = True
        try:
            super().datagram_received(data, addr)
        finally:
            self._receiving = False

    def close_with_reason(self, code: int, reason: str) -> None:
        """Close the connection, telling the peer why."""
        if self._open:
            self._quic.close(error_code=code, reason_phrase=reason)
            self.transmit()

    def _authenticate_timed_out(self) -> None:
        self._deadline = None
        if not self._proven and self._open:
            seconds = self._hub.config.authenticate_timeout_seconds
            self.close_with_reason(
                CLOSE_UNAUTHENTICATED, f"no identity proven within {seconds:g} s"
            )

    def _on_proven(self) -> None:
        """The dialer proved a member's identity: lift its small budgets."""
        self._proven = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._request_budget = self._hub.config.request_bytes_after_proof
        # Granted with the next packet, the one carrying our proof.
        self._bounded.set_connection_window(self._hub.config.receive_window_bytes)

    # ---- events ---------------------------------------------------------

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._on_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, StreamReset | StopSendingReceived):
            self._on_reset(event.stream_id, isinstance(event, StreamReset))
        elif isinstance(event, HandshakeCompleted):
            if self._refusal is not None:
                self.close_with_reason(CLOSE_TOO_MANY, self._refusal)
            elif event.alpn_protocol != PEER_ALPN:
                self.close_with_reason(CLOSE_BAD_ALPN, f"ALPN must be {PEER_ALPN}")
        elif isinstance(event, ConnectionTerminated):
            self._on_terminated()

    def _on_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if stream_id % 4 != 0:
            # Only client-initiated bidirectional streams carry calls.
            if stream_id % 4 == 2:
                self._quic.stop_stream(stream_id, STREAM_REJECTED)
            return
        if self._refusal is not None or not self._open:
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _Stream(ServerCall(self._limits))
        if end_stream:
            stream.peer_done = True
        if not stream.receiving() or stream.call is None:
            self._forget_if_done(stream_id, stream)
            return
        if self._request_bytes + len(data) > self._request_budget:
            self._reject(stream_id, stream, PayloadTooLargeError("too many request bytes"))
        elif not self._hub.budget.reserve(len(data)):
            self._reject(stream_id, stream, UnavailableError("this peer is busy; retry later"))
        else:
            stream.buffered += len(data)
            self._request_bytes += len(data)
            for call_event in stream.call.receive_data(data, end_stream):
                if isinstance(call_event, RequestReceived):
                    self._handle(stream_id, stream, call_event.request)
                elif isinstance(call_event, RequestRejected):
                    self._reject(stream_id, stream, call_event.error)
        self._forget_if_done(stream_id, stream)

    def _handle(self, stream_id: int, stream: _Stream, request: Request) -> None:
        outcome: Response | DirectMessage
        try:
            outcome = self._gate.handle(request.call)
        except ServiceError as error:
            outcome = ErrorResponse.from_exception(error)
        if isinstance(outcome, DirectMessage):
            # The message's bytes stay counted (this connection's request
            # budget, the shared budget) until the host is done with it, even
            # if the stream is reset meanwhile: a peer cannot queue more host
            # work than its budget holds.
            held, stream.buffered = stream.buffered, 0
            host = self._hub.deliver(outcome)
            host.add_done_callback(lambda _task: self._release_bytes(held))
            stream.task = asyncio.create_task(self._answer(stream_id, stream, host))
            return
        self._release_request(stream)
        self._respond(stream_id, stream, outcome)
        if self._gate.proven is not None and not self._proven:
            self._on_proven()

    async def _answer(
        self, stream_id: int, stream: _Stream, host: asyncio.Future[Response]
    ) -> None:
        try:
            # Shielded: a reset stream must not interrupt the host.
            self._respond(stream_id, stream, await asyncio.shield(host))
        except asyncio.CancelledError:
            pass  # the stream or the connection went away; the host call goes on
        finally:
            stream.task = None
            if self._streams.get(stream_id) is stream and stream.done():
                self._streams.pop(stream_id, None)

    def _release_request(self, stream: _Stream) -> None:
        held, stream.buffered = stream.buffered, 0
        self._release_bytes(held)

    def _release_bytes(self, size: int) -> None:
        self._request_bytes -= size
        self._hub.budget.release(size)

    def _reject(self, stream_id: int, stream: _Stream, error: ServiceError) -> None:
        """Answer a request we will not serve with its coded error and stop its upload."""
        self._release_request(stream)
        call, stream.call = stream.call, None
        if call is None:
            return
        self._send(stream_id, call.reject(error), end_stream=True)
        if not stream.peer_done:
            try:
                self._quic.stop_stream(stream_id, STREAM_REJECTED)
            except ValueError:
                stream.peer_done = True
            self._flush()

    def _on_reset(self, stream_id: int, is_reset: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if is_reset:
            if stream.call is not None:
                stream.call.receive_reset()
            self._release_request(stream)
            stream.peer_done = True
        stream.stopped = True
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        self._forget_if_done(stream_id, stream)

    def _on_terminated(self) -> None:
        if not self._open:
            return
        self._open = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._hub.budget.forget(self._bounded)
        for stream in self._streams.values():
            self._release_request(stream)
            if stream.task is not None and not stream.task.done():
                stream.task.cancel()
        self._streams.clear()
        if self._address is not None:
            self._hub.release(self._address)
            self._address = None
        self._hub.protocols.discard(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_terminated()
        super().connection_lost(exc)

    # ---- answering ------------------------------------------------------

    def _respond(self, stream_id: int, stream: _Stream, answer: Response) -> None:
        call = stream.call
        if call is not None and not stream.stopped:
            self._send(stream_id, call.respond(answer), end_stream=call.finished)

    def _send(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if not self._open:
            return
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=end_stream)
        except (RuntimeError, ValueError, AssertionError):
            return  # the stream was reset or stopped meanwhile
        self._flush()

    def _flush(self) -> None:
        # Inside a datagram, aioquic transmits once it processed it. Outside,
        # one transmit per loop turn: answers that complete together share
        # datagrams instead of paying one (and a sendto) each.
        if self._open and not self._receiving and not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._transmit_pending)

    def _transmit_pending(self) -> None:
        self._flush_pending = False
        if self._open:
            self.transmit()

    def _forget_if_done(self, stream_id: int, stream: _Stream) -> None:
        if stream.done():
            self._streams.pop(stream_id, None)


@dataclass(slots=True)
class PeerListener:
    """A bound UDP socket answering peer calls."""

    transport: asyncio.DatagramTransport
    server: QuicServer
    hub: ListenerHub
    host: str
    port: int

    async def close(self, within: float = 5.0) -> None:
        """Refuse new connections, close the open ones, let host calls finish."""
        self.hub.accepting = False
        for protocol in list(self.hub.protocols):
            protocol.close_with_reason(CLOSE_SHUTDOWN, "this peer is shutting down")
        await self.hub.drain(within)
        self.server.close()


async def start_listener(hub: ListenerHub) -> PeerListener:
    """Bind the configured host and port (0 = any free port) and answer peer calls there."""
    config = hub.config
    # Flow-control windows are set per connection (BoundedQuicConnection).
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=[PEER_ALPN],
        idle_timeout=config.idle_timeout_seconds,
    )
    configuration.certificate = hub.certificate.certificate
    configuration.private_key = hub.certificate.private_key

    def create_protocol(*args: Any, **kwargs: Any) -> _PeerProtocol:
        return _PeerProtocol(*args, hub=hub, **kwargs)

    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: QuicServer(configuration=configuration, create_protocol=create_protocol),
        local_addr=(config.listen_host, config.listen_port),
    )
    port = int(transport.get_extra_info("sockname")[1])
    return PeerListener(transport, server, hub, config.listen_host, port)
