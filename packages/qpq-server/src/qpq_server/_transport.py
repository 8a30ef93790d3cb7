"""The aioquic server adapter: bytes in, the qpq-proto state machine, bytes out.

It makes no protocol decisions: each client-initiated bidirectional stream
gets a :class:`qpq_proto.ServerCall`; a complete request goes to the
dispatcher. A call answered without waiting (a failed check, Health from a
recent storage check) is sent in the same event-loop turn, so the answer
leaves with the datagram aioquic sends after processing the request; a call
that waits runs in its own task (so a slow call never blocks another
stream). A rejected stream gets its coded error and a STOP_SENDING; a reset
or STOP_SENDING from the client cancels that stream's task.

What it bounds, because aioquic itself does not (it grows every flow-control
window as data arrives and buffers all that is written to a stream):

- what QUIC buffers below the adapter: every connection is a
  :class:`qpq_proto.quic.BoundedQuicConnection`, whose credit grows only as
  this adapter takes data out, by ``stream_window`` per stream and, per
  connection, ``unauthenticated_buffer_bytes`` until the connection has
  authenticated and ``receive_window`` after; all connections share one
  :class:`~qpq_proto.quic.ReceiveBudget` of ``receive_budget_bytes``;
- time to authenticate: a connection that has not proven an identity
  ``authenticate_timeout_seconds`` after it opened is closed with a reason;
- connections: ``max_connections`` in all and ``max_connections_per_address``
  per source address (IPv6: per /64); one over a cap is closed with a reason
  once its handshake completes (before that, QUIC would drop the reason);
- request bytes buffered across a connection's unfinished requests
  (``connection_buffer_limit``, or ``unauthenticated_buffer_bytes`` before
  Authenticate): the stream that would exceed it is answered
  ``payload_too_large``; one that would exceed the shared receive budget,
  ``unavailable``; a request not complete ``request_timeout_seconds``
  after its first byte is answered ``malformed_request``; both get a STOP_SENDING;
- bytes a subscribe stream holds unacknowledged (see :mod:`._subscribe`),
  re-checked whenever a datagram (with its ACKs and credit) arrives.

The address a connection is counted and rate-limited under is the one its
handshake came from; it moves only to an address aioquic has validated
(RFC 9000 section 9.3), so datagrams with a spoofed source cannot move it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from qpq_proto import (
    ALPN,
    CallState,
    Endpoint,
    RequestReceived,
    RequestRejected,
    Response,
    ServerCall,
)
from qpq_proto.errors import (
    MalformedRequestError,
    PayloadTooLargeError,
    ServiceError,
    UnavailableError,
)
from qpq_proto.quic import BoundedQuicConnection, ReceiveBudget
from qpq_server._aioquic import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicConfiguration,
    QuicConnectionProtocol,
    QuicEvent,
    QuicServer,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
    send_buffered_bytes,
)
from qpq_server._config import ServerConfig
from qpq_server._context import ConnectionState
from qpq_server._dispatch import Answer, Dispatcher, PendingAnswer, Subscription, address_key
from qpq_server._logging import get_logger
from qpq_server._subscribe import SubscriptionRegistry, pump_events
from qpq_server._tls import TlsMaterial

__all__ = ["Listener", "TransportHub", "start_listener"]

_log = get_logger("transport")

#: Application error code on STOP_SENDING for a stream whose request was rejected.
STREAM_REJECTED = 0x10
#: Application error code when a connection is closed for shutdown or ALPN.
CLOSE_SHUTDOWN = 0x0
CLOSE_BAD_ALPN = 0x11
#: Application error code when a connection is refused because a cap is reached.
CLOSE_TOO_MANY = 0x13
#: Application error code when a connection did not authenticate in time.
CLOSE_UNAUTHENTICATED = 0x14


def _endpoint(addr: Any) -> Endpoint | None:
    try:
        host, port = str(addr[0]), int(addr[1])
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except (TypeError, ValueError, IndexError):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        host = str(ip.ipv4_mapped)
    return Endpoint(host=host, port=port) if port > 0 else None


@dataclass(slots=True)
class _Stream:
    # None once the request was rejected: its buffered bytes are dropped with it.
    call: ServerCall | None
    task: asyncio.Task[None] | None = None
    peer_done: bool = False
    stopped: bool = False
    #: Request bytes held for this stream's unfinished request.
    buffered: int = 0
    deadline: asyncio.TimerHandle | None = None

    def done(self) -> bool:
        """Both directions are over and no task still uses the stream."""
        answered = self.call is None or self.call.finished or self.stopped
        idle = self.task is None or self.task.done()
        return answered and self.peer_done and idle

    def receiving(self) -> bool:
        """The request is still arriving."""
        return self.call is not None and self.call.state is CallState.WAITING


@dataclass(slots=True)
class TransportHub:
    """What every connection shares: the dispatcher, live connections and their caps."""

    dispatcher: Dispatcher
    protocols: set[QpqServerProtocol] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    accepting: bool = True
    admitted: int = 0
    by_address: dict[str, int] = field(default_factory=dict)
    subscriptions: SubscriptionRegistry = field(init=False)
    #: What all connections together may hold in receive buffers.
    receive_budget: ReceiveBudget = field(init=False)

    def __post_init__(self) -> None:
        config = self.dispatcher.app.config
        self.subscriptions = SubscriptionRegistry(config.max_subscriptions_per_identity)
        self.receive_budget = ReceiveBudget(config.receive_budget_bytes)

    def admit(self, key: str) -> str | None:
        """Count a new connection from address ``key``; the refusal reason if over a cap."""
        config = self.dispatcher.app.config
        if self.admitted >= config.max_connections:
            self.dispatcher.metrics.refused_connections.labels("total").inc()
            return "too many connections to this server"
        if self.by_address.get(key, 0) >= config.max_connections_per_address:
            self.dispatcher.metrics.refused_connections.labels("address").inc()
            return "too many connections from this address"
        self.admitted += 1
        self.by_address[key] = self.by_address.get(key, 0) + 1
        return None

    def release(self, key: str) -> None:
        """Forget a connection that :meth:`admit` counted."""
        self.admitted -= 1
        left = self.by_address.get(key, 0) - 1
        if left > 0:
            self.by_address[key] = left
        else:
            self.by_address.pop(key, None)

    def move(self, old: str, new: str) -> None:
        """Count a connection that :meth:`admit` counted under ``old`` under ``new``."""
        self.release(old)
        self.admitted += 1
        self.by_address[new] = self.by_address.get(new, 0) + 1


@dataclass(slots=True)
class _StreamSink:
    """One subscribe stream as the :class:`._subscribe.EventSink` the pump writes to."""

    protocol: QpqServerProtocol
    stream_id: int

    def send(self, data: bytes, end_stream: bool) -> bool:
        return self.protocol._send(self.stream_id, data, end_stream)

    async def wait_for_room(self, size: int) -> bool:
        return await self.protocol._wait_for_room(self.stream_id, size)

    def abort(self, code: int) -> None:
        self.protocol._abort(self.stream_id, code)


class QpqServerProtocol(QuicConnectionProtocol):
    """One QUIC connection from one client."""

    def __init__(self, *args: Any, hub: TransportHub, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hub = hub
        self._config: ServerConfig = hub.dispatcher.app.config
        # Before its first datagram: the peer learns these windows in the handshake.
        self._bounded = BoundedQuicConnection.adopt(
            self._quic,
            stream_window=self._config.stream_window,
            connection_window=self._config.unauthenticated_buffer_bytes,
            budget=hub.receive_budget,
        )
        self._bounded.wake = self.transmit
        #: Request bytes this connection may buffer: small until it authenticated.
        self._request_budget = min(
            self._config.connection_buffer_limit, self._config.unauthenticated_buffer_bytes
        )
        self._limits = hub.dispatcher.app.limits
        self._streams: dict[int, _Stream] = {}
        self._state = ConnectionState(peer=None)
        self._open = True
        self._flush_pending = False
        #: Inside aioquic's datagram_received, which transmits once it is done.
        self._receiving = False
        #: Request bytes buffered across this connection's unfinished requests.
        self._request_bytes = 0
        #: Subscribe streams waiting for the peer to take data, woken per datagram.
        self._room_waiters: dict[int, asyncio.Event] = {}
        #: The address key this connection is counted under (None: not yet, or refused).
        self._address_key: str | None = None
        self._refusal: str | None = None
        self._admission_done = False
        self._authenticated = False
        self._auth_deadline: asyncio.TimerHandle | None = self._loop.call_later(
            self._config.authenticate_timeout_seconds, self._authenticate_timed_out
        )
        hub.protocols.add(self)
        hub.dispatcher.metrics.connections.inc()
        if not hub.accepting:
            self.close_with_reason(CLOSE_SHUTDOWN, "server shutting down")

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if not self._admission_done:
            # The address the handshake comes from; later ones only once validated.
            self._state.peer = _endpoint(addr)
            self._admit(addr)
        self._receiving = True
        try:
            super().datagram_received(data, addr)
        finally:
            self._receiving = False
        # ACKs and flow-control credit arrive in datagrams: let waiting
        # subscribe streams re-check their budget.
        for waiter in self._room_waiters.values():
            waiter.set()

    def _follow_validated_path(self) -> None:
        """Move the observed address (and its counts) to a validated new peer address."""
        validated = self._bounded.validated_peer()
        peer = self._state.peer
        if validated is None or (peer is not None and (peer.host, peer.port) == validated):
            return
        endpoint = _endpoint(validated)
        if endpoint is None:
            return
        self._state.peer = endpoint
        key = address_key(endpoint.host)
        if self._address_key is not None and key != self._address_key:
            self._hub.move(self._address_key, key)
            self._address_key = key

    def _admit(self, addr: Any) -> None:
        self._admission_done = True
        key = address_key(self._state.peer.host) if self._state.peer else str(addr)
        self._refusal = self._hub.admit(key)
        if self._refusal is None:
            self._address_key = key
        else:
            _log.warning("connection refused", extra={"fields": {"reason": self._refusal}})

    def close_with_reason(self, code: int, reason: str) -> None:
        """Close the connection, telling the peer why."""
        if self._open:
            self._quic.close(error_code=code, reason_phrase=reason)
            self.transmit()

    def _authenticate_timed_out(self) -> None:
        self._auth_deadline = None
        if self._authenticated or not self._open:
            return
        self._hub.dispatcher.metrics.refused_connections.labels("unauthenticated").inc()
        seconds = self._config.authenticate_timeout_seconds
        self.close_with_reason(CLOSE_UNAUTHENTICATED, f"no identity proven within {seconds:g} s")

    def _on_authenticated(self) -> None:
        """The connection proved an identity: lift its small budgets."""
        self._authenticated = True
        if self._auth_deadline is not None:
            self._auth_deadline.cancel()
            self._auth_deadline = None
        self._request_budget = self._config.connection_buffer_limit
        # Granted with the next packet, the answer to Authenticate.
        self._bounded.set_connection_window(self._config.receive_window)

    # ---- events ---------------------------------------------------------

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._on_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, StreamReset | StopSendingReceived):
            self._on_reset(event.stream_id, event.error_code, isinstance(event, StreamReset))
        elif isinstance(event, HandshakeCompleted):
            if self._refusal is not None:
                self.close_with_reason(CLOSE_TOO_MANY, self._refusal)
            elif event.alpn_protocol != ALPN:
                self.close_with_reason(CLOSE_BAD_ALPN, f"ALPN must be {ALPN}")
        elif isinstance(event, ConnectionTerminated):
            self._on_terminated()

    def _on_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if stream_id % 4 != 0:
            # Only client-initiated bidirectional streams carry calls.
            if stream_id % 4 == 2:
                self._quic.stop_stream(stream_id, STREAM_REJECTED)
                self.transmit()
            return
        if self._refusal is not None or not self._open:
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _Stream(ServerCall(self._limits))
        if end_stream:
            stream.peer_done = True
        if not stream.receiving() or stream.call is None:
            # Answered or rejected already: late bytes are dropped unread.
            self._forget_if_done(stream_id, stream)
            return
        if self._request_bytes + len(data) > self._request_budget:
            self._reject(
                stream_id,
                stream,
                PayloadTooLargeError("too many request bytes in flight on this connection"),
            )
            self._forget_if_done(stream_id, stream)
            return
        if not self._hub.receive_budget.reserve(len(data)):
            self._reject(
                stream_id,
                stream,
                UnavailableError("the server holds too many request bytes; retry later"),
            )
            self._forget_if_done(stream_id, stream)
            return
        stream.buffered += len(data)
        self._request_bytes += len(data)
        for call_event in stream.call.receive_data(data, end_stream):
            if isinstance(call_event, RequestReceived):
                self._release_request(stream)
                self._start(stream_id, stream, call_event)
            elif isinstance(call_event, RequestRejected):
                self._reject(stream_id, stream, call_event.error)
        if stream.deadline is None and stream.receiving():
            # Armed once the request spans more than one chunk: most arrive whole.
            stream.deadline = self._loop.call_later(
                self._config.request_timeout_seconds, self._request_timed_out, stream_id, stream
            )
        self._forget_if_done(stream_id, stream)

    def _start(self, stream_id: int, stream: _Stream, received: RequestReceived) -> None:
        self._follow_validated_path()
        answer = self._hub.dispatcher.start(received.request, self._state)
        if isinstance(answer, PendingAnswer | Subscription):
            task = asyncio.create_task(self._serve(stream_id, stream, answer))
            if isinstance(answer, PendingAnswer):
                # Cancelled before it ran, the task leaves the handler unstarted.
                task.add_done_callback(lambda _task: answer.close())
            stream.task = task
            self._hub.tasks.add(task)
            task.add_done_callback(self._hub.tasks.discard)
            return
        try:
            self._respond(stream_id, stream, answer)
        except Exception:  # noqa: BLE001 - one stream's failure must not reach others
            _log.exception("stream handling failed", extra={"fields": {"stream": stream_id}})

    def _release_request(self, stream: _Stream) -> None:
        """The request left the receive buffer: stop counting it and its deadline."""
        self._request_bytes -= stream.buffered
        self._hub.receive_budget.release(stream.buffered)
        stream.buffered = 0
        if stream.deadline is not None:
            stream.deadline.cancel()
            stream.deadline = None

    def _reject(self, stream_id: int, stream: _Stream, error: ServiceError) -> None:
        """Answer a request we will not serve with its coded error and stop its upload."""
        self._release_request(stream)
        self._hub.dispatcher.metrics.bad_streams.labels(error.code.name.lower()).inc()
        call, stream.call = stream.call, None
        if call is None:
            return
        self._send(stream_id, call.reject(error), end_stream=True)
        if not stream.peer_done:
            # Stop the client's upload of a request we will never read. The
            # stream is remembered until the client's FIN or RESET_STREAM, so
            # bytes still in flight are dropped instead of starting a new request.
            try:
                self._quic.stop_stream(stream_id, STREAM_REJECTED)
            except ValueError:
                stream.peer_done = True
            self.transmit()

    def _request_timed_out(self, stream_id: int, stream: _Stream) -> None:
        stream.deadline = None
        if self._streams.get(stream_id) is not stream or not stream.receiving():
            return
        seconds = self._config.request_timeout_seconds
        self._reject(
            stream_id,
            stream,
            MalformedRequestError(f"the request did not arrive in full within {seconds:g} s"),
        )
        self._forget_if_done(stream_id, stream)

    def _on_reset(self, stream_id: int, error_code: int, is_reset: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if is_reset:
            # RESET_STREAM: the client abandoned its side; nothing more arrives.
            if stream.call is not None:
                stream.call.receive_reset(error_code)
            self._release_request(stream)
            stream.peer_done = True
        # Either way nothing more can or need be sent (subscribe ends here).
        stream.stopped = True
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        self._forget_if_done(stream_id, stream)

    def _on_terminated(self) -> None:
        if not self._open:
            return
        self._open = False
        if self._auth_deadline is not None:
            self._auth_deadline.cancel()
            self._auth_deadline = None
        self._hub.receive_budget.forget(self._bounded)
        for stream in self._streams.values():
            self._release_request(stream)
            if stream.task is not None and not stream.task.done():
                stream.task.cancel()
        self._streams.clear()
        if self._address_key is not None:
            self._hub.release(self._address_key)
            self._address_key = None
        self._hub.protocols.discard(self)
        self._hub.dispatcher.metrics.connections.dec()

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_terminated()
        super().connection_lost(exc)

    # ---- answering ------------------------------------------------------

    def _send(self, stream_id: int, data: bytes, end_stream: bool) -> bool:
        if not self._open:
            return False
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=end_stream)
        except (RuntimeError, ValueError, AssertionError):
            return False  # the stream was reset or stopped meanwhile
        # One flush per loop turn: answers that complete together share datagrams
        # instead of paying a datagram (and a sendto) each. While a datagram is
        # being processed, aioquic transmits when it is done.
        if not self._flush_pending and not self._receiving:
            self._flush_pending = True
            self._loop.call_soon(self._flush)
        return True

    def _abort(self, stream_id: int, code: int) -> None:
        """Reset our side of ``stream_id``; QUIC then drops what it still buffered."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.stopped = True
        if not self._open:
            return
        try:
            self._quic.reset_stream(stream_id, code)
        except (RuntimeError, ValueError, AssertionError):
            return
        self.transmit()

    async def _wait_for_room(self, stream_id: int, size: int) -> bool:
        """Wait until ``stream_id`` holds few enough unacknowledged bytes for ``size`` more.

        Woken by every datagram from the peer (that is when ACKs and credit
        arrive). False when the buffer made no progress for
        ``subscribe_stall_seconds``, or the connection is gone.
        """
        budget = self._config.subscribe_buffer_limit
        stall = self._config.subscribe_stall_seconds
        deadline = self._loop.time() + stall
        previous: int | None = None
        while self._open:
            buffered = send_buffered_bytes(self, stream_id)
            # None: this aioquic cannot tell; fail closed (as if full).
            if buffered is not None:
                if buffered == 0 or buffered + size <= budget:
                    return True
                if previous is not None and buffered < previous:
                    deadline = self._loop.time() + stall  # the peer is taking data
                previous = buffered
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return False
            waiter = self._room_waiters[stream_id] = asyncio.Event()
            try:
                async with asyncio.timeout(remaining):
                    await waiter.wait()
            except TimeoutError:
                pass
            finally:
                self._room_waiters.pop(stream_id, None)
        return False

    def _flush(self) -> None:
        self._flush_pending = False
        if self._open:
            self.transmit()

    def _forget_if_done(self, stream_id: int, stream: _Stream) -> None:
        if stream.done():
            self._streams.pop(stream_id, None)

    def _respond(self, stream_id: int, stream: _Stream, answer: Response) -> None:
        if not self._authenticated and self._state.identity is not None:
            self._on_authenticated()
        call = stream.call
        if call is not None:
            self._send(stream_id, call.respond(answer), end_stream=call.finished)

    async def _serve(
        self, stream_id: int, stream: _Stream, pending: PendingAnswer | Subscription
    ) -> None:
        try:
            answer: Answer = await pending.wait() if isinstance(pending, PendingAnswer) else pending
            if stream.call is None:
                return
            if isinstance(answer, Subscription):
                await self._stream_events(stream_id, stream, answer)
            else:
                self._respond(stream_id, stream, answer)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - one stream's failure must not reach others
            _log.exception("stream handling failed", extra={"fields": {"stream": stream_id}})
        finally:
            stream.task = None
            if self._streams.get(stream_id) is stream and stream.done():
                self._streams.pop(stream_id, None)

    async def _stream_events(self, stream_id: int, stream: _Stream, sub: Subscription) -> None:
        if stream.call is None:
            return
        task = asyncio.current_task()
        slot = self._hub.subscriptions.add(sub.recipient, task)
        try:
            # Closed on the way out, cancelled or not: its notifier watch ends with it.
            async with contextlib.aclosing(sub.events()) as events:
                delivered = await pump_events(
                    stream.call, events, _StreamSink(self, stream_id), slot
                )
        finally:
            self._hub.subscriptions.remove(slot)
        if not delivered:
            self._hub.dispatcher.metrics.subscribe_stalls.inc()
            _log.info("subscriber stalled; stream reset", extra={"fields": {"stream": stream_id}})


@dataclass(slots=True)
class Listener:
    """A bound UDP socket serving qpq."""

    transport: asyncio.DatagramTransport
    server: QuicServer
    host: str
    port: int

    def close(self) -> None:
        self.server.close()


def quic_server_configuration(tls: TlsMaterial, idle_timeout: float) -> Any:
    # Flow-control windows are set per connection (BoundedQuicConnection).
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=[ALPN],
        idle_timeout=idle_timeout,
    )
    configuration.certificate = tls.certificate
    configuration.certificate_chain = list(tls.chain)
    configuration.private_key = tls.private_key
    return configuration


async def start_listener(
    host: str, port: int, tls: TlsMaterial, hub: TransportHub, idle_timeout: float
) -> Listener:
    """Bind ``host:port`` (0 = any free port) and serve qpq on it."""
    configuration = quic_server_configuration(tls, idle_timeout)
    loop = asyncio.get_running_loop()

    def create_protocol(*args: Any, **kwargs: Any) -> QpqServerProtocol:
        return QpqServerProtocol(*args, hub=hub, **kwargs)

    transport, server = await loop.create_datagram_endpoint(
        lambda: QuicServer(configuration=configuration, create_protocol=create_protocol),
        local_addr=(host, port),
    )
    sockname = transport.get_extra_info("sockname")
    return Listener(transport=transport, server=server, host=host, port=int(sockname[1]))


def close_all(hub: TransportHub, reason: str) -> None:
    """Close every live connection with ``reason``."""
    for protocol in list(hub.protocols):
        protocol.close_with_reason(CLOSE_SHUTDOWN, reason)
