"""The aioquic server adapter: bytes in, the qpq-proto state machine, bytes out.

It makes no protocol decisions: each client-initiated bidirectional stream
gets a :class:`qpq_proto.ServerCall`; a complete request goes to the
dispatcher in its own task (so a slow call never blocks another stream); a
rejected stream gets its coded error and a STOP_SENDING; a reset or
STOP_SENDING from the client cancels that stream's task.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from qpq_proto import (
    ALPN,
    Endpoint,
    ErrorResponse,
    RequestReceived,
    RequestRejected,
    ServerCall,
    Subscribed,
)
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
)
from qpq_server._context import ConnectionState
from qpq_server._dispatch import Dispatcher, Subscription
from qpq_server._logging import get_logger
from qpq_server._tls import TlsMaterial

__all__ = ["Listener", "TransportHub", "start_listener"]

_log = get_logger("transport")

#: Application error code on STOP_SENDING for a stream whose request was rejected.
STREAM_REJECTED = 0x10
#: Application error code when a connection is closed for shutdown or ALPN.
CLOSE_SHUTDOWN = 0x0
CLOSE_BAD_ALPN = 0x11


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
    call: ServerCall
    task: asyncio.Task[None] | None = None
    peer_done: bool = False
    stopped: bool = False

    def done(self) -> bool:
        """Both directions are over and no task still uses the stream."""
        answered = self.call.finished or self.stopped
        idle = self.task is None or self.task.done()
        return answered and self.peer_done and idle


@dataclass(slots=True)
class TransportHub:
    """What every connection shares: the dispatcher and the live connections."""

    dispatcher: Dispatcher
    protocols: set[QpqServerProtocol] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    accepting: bool = True


class QpqServerProtocol(QuicConnectionProtocol):
    """One QUIC connection from one client."""

    def __init__(self, *args: Any, hub: TransportHub, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hub = hub
        self._limits = hub.dispatcher.app.limits
        self._streams: dict[int, _Stream] = {}
        self._state = ConnectionState(peer=None)
        self._open = True
        self._flush_pending = False
        hub.protocols.add(self)
        hub.dispatcher.metrics.connections.inc()
        if not hub.accepting:
            self.close_with_reason(CLOSE_SHUTDOWN, "server shutting down")

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        # The address the server observes (kept current across migration).
        if self._state.peer is None or (
            (self._state.peer.host, self._state.peer.port) != (addr[0], addr[1])
        ):
            self._state.peer = _endpoint(addr)
        super().datagram_received(data, addr)

    def close_with_reason(self, code: int, reason: str) -> None:
        """Close the connection, telling the peer why."""
        if self._open:
            self._quic.close(error_code=code, reason_phrase=reason)
            self.transmit()

    # ---- events ---------------------------------------------------------

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._on_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, StreamReset | StopSendingReceived):
            self._on_reset(event.stream_id, event.error_code, isinstance(event, StreamReset))
        elif isinstance(event, HandshakeCompleted):
            if event.alpn_protocol != ALPN:
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
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _Stream(ServerCall(self._limits))
        if end_stream:
            stream.peer_done = True
        for call_event in stream.call.receive_data(data, end_stream):
            if isinstance(call_event, RequestReceived):
                task = asyncio.create_task(self._serve(stream_id, stream, call_event))
                stream.task = task
                self._hub.tasks.add(task)
                task.add_done_callback(self._hub.tasks.discard)
            elif isinstance(call_event, RequestRejected):
                code = call_event.error.code.name.lower()
                self._hub.dispatcher.metrics.bad_streams.labels(code).inc()
                reply = stream.call.respond(ErrorResponse.from_exception(call_event.error))
                self._send(stream_id, reply, end_stream=True)
                if not stream.peer_done:
                    # Stop the client's upload of a request we will never read.
                    self._quic.stop_stream(stream_id, STREAM_REJECTED)
                    self.transmit()
                    stream.peer_done = True
        self._forget_if_done(stream_id, stream)

    def _on_reset(self, stream_id: int, error_code: int, is_reset: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if is_reset:
            # RESET_STREAM: the client abandoned its side; nothing more arrives.
            stream.call.receive_reset(error_code)
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
        for stream in self._streams.values():
            if stream.task is not None and not stream.task.done():
                stream.task.cancel()
        self._streams.clear()
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
        # instead of paying a datagram (and a sendto) each.
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_pending = False
        if self._open:
            self.transmit()

    def _forget_if_done(self, stream_id: int, stream: _Stream) -> None:
        if stream.done():
            self._streams.pop(stream_id, None)

    async def _serve(self, stream_id: int, stream: _Stream, received: RequestReceived) -> None:
        try:
            answer = await self._hub.dispatcher.dispatch(received.request, self._state)
            if isinstance(answer, Subscription):
                await self._stream_events(stream_id, stream, answer)
            else:
                self._send(stream_id, stream.call.respond(answer), end_stream=stream.call.finished)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - one stream's failure must not reach others
            _log.exception("stream handling failed", extra={"fields": {"stream": stream_id}})
        finally:
            stream.task = None
            if self._streams.get(stream_id) is stream and stream.done():
                self._streams.pop(stream_id, None)

    async def _stream_events(self, stream_id: int, stream: _Stream, sub: Subscription) -> None:
        if not self._send(stream_id, stream.call.respond(Subscribed()), end_stream=False):
            return
        async for event in sub.events():
            if not self._send(stream_id, stream.call.push(event), end_stream=stream.call.finished):
                return
            if stream.call.finished:
                return
        stream.call.close()
        self._send(stream_id, b"", end_stream=True)


@dataclass(slots=True)
class Listener:
    """A bound UDP socket serving qpq."""

    transport: asyncio.DatagramTransport
    server: QuicServer
    host: str
    port: int

    def close(self) -> None:
        self.server.close()


def quic_server_configuration(tls: TlsMaterial, idle_timeout: float, max_message: int) -> Any:
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=[ALPN],
        idle_timeout=idle_timeout,
        # A whole request may be in flight on one stream before we read it.
        max_stream_data=max_message,
        max_data=2 * max_message,
    )
    configuration.certificate = tls.certificate
    configuration.certificate_chain = list(tls.chain)
    configuration.private_key = tls.private_key
    return configuration


async def start_listener(
    host: str, port: int, tls: TlsMaterial, hub: TransportHub, idle_timeout: float
) -> Listener:
    """Bind ``host:port`` (0 = any free port) and serve qpq on it."""
    configuration = quic_server_configuration(
        tls, idle_timeout, hub.dispatcher.app.limits.max_message_bytes
    )
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
