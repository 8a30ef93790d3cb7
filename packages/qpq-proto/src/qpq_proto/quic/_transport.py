"""The client side of qpq over QUIC: one bidirectional stream per call.

It makes no protocol decisions. Each call opens a client-initiated
bidirectional stream, writes the bytes :class:`qpq_proto.ClientCall`
produces, ends its side, and feeds what arrives back into that state
machine. Every aioquic or socket failure becomes
:class:`~qpq_proto.errors.ConnectionFailedError` here, once.

The peer's certificate is checked before any byte of a call (and so the
access token) leaves: against a CA, or pinned by the SHA-256 of its DER
encoding. There is no mode that trusts any certificate. One mode checks
no certificate against a CA or pin, and then trusts none either: between
two qpq clients (ALPN ``qpq-p2p/1``, ``in_band_identity_proof=True``) each
peer's self-signed certificate means nothing until both have proven their
identity keys over the connection, bound to it (qpq-p2p does that first);
such a connection carries peer calls only, which carry no token.

What a peer can make the caller hold is bounded by QUIC flow control, with
credit granted as the caller *takes* what arrived, not as it arrives
(:class:`BoundedQuicConnection` with ``take_on_delivery=False``):

- The bytes of a stream count as taken when the caller of :meth:`Transport.call`,
  :meth:`~Transport.stream` or :meth:`~Transport.raw` takes the event they
  completed from the stream's queue (the bytes of several messages that
  completed together go with the last of them). A message still arriving
  counts only once complete. Bytes nobody will take count at once: those of
  an abandoned call (queued or still arriving), of a stream the peer reset
  (a message it cut short), of a stream no call of ours opened, and any
  that arrive after the call ended or failed.
- Each stream may run ``max_message_bytes + GRANT_STEP`` bytes ahead of what
  was taken of it, and credit is granted again per ``GRANT_STEP`` taken: so
  the peer may always send at least ``max_message_bytes + 1`` bytes past
  what was taken, one whole message of the largest size (its framing
  included: the limit counts the Cap'n Proto header). A peer that sends
  whole messages never waits on a caller that took everything queued.
- The connection window is one stream window per call receiving (at least
  two): a call whose caller takes nothing holds at most its stream window
  and never starves another call, and messages still arriving on every
  call at once always fit. A connection holds at most
  ``max(2, calls) * (max_message_bytes + GRANT_STEP)`` bytes that its
  callers have not taken: 2 x (8 MiB + 64 KiB) for a following client with
  no other call in flight, whatever the peer pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import socket
import ssl
from collections.abc import AsyncGenerator
from typing import Any

from qpq_proto import PEER_ALPN
from qpq_proto._address import format_host_port
from qpq_proto._calls import (
    CallCompleted,
    CallFailed,
    CallState,
    ClientCall,
    ClientEvent,
    EventReceived,
    ResponseReceived,
)
from qpq_proto._limits import DEFAULT_LIMITS, Limits
from qpq_proto._messages import ACCESS, Access, Event, Request, Response
from qpq_proto.errors import ConnectionFailedError, LocalProtocolError
from qpq_proto.quic._aioquic import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicConfiguration,
    QuicConnectionProtocol,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
    peer_certificate_der,
)
from qpq_proto.quic._bounded import BoundedQuicConnection

__all__ = ["AckingStream", "Transport", "certificate_fingerprint"]

_LOST = "the connection was lost"


def certificate_fingerprint(der: bytes) -> str:
    """SHA-256 hex of a DER certificate: the form a pin takes."""
    return hashlib.sha256(der).hexdigest()


class _Lost(ConnectionFailedError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"{_LOST} ({reason})")
        self.reason = reason


#: What a stream's queue holds: state-machine events, raw bytes (raw streams),
#: None (a raw stream ended) or the connection's end.
_Item = ClientEvent | bytes | None | _Lost

#: Credit is granted again once this many bytes of a stream (or of the
#: connection) were taken since the last grant: one MAX_STREAM_DATA and
#: MAX_DATA per step, not per event. The windows are widened by it.
GRANT_STEP = 64 * 1024

_OVER = (CallState.DONE, CallState.FAILED)


class _Stream:
    """One stream: its state machine (None for a raw stream), and its queue of
    items, each with the stream bytes that count as taken once it is taken."""

    def __init__(self, call: ClientCall | None) -> None:
        self.call = call
        self.items: asyncio.Queue[tuple[_Item, int]] = asyncio.Queue()
        #: Bytes handed out by QUIC that no queued item accounts for: a
        #: message still arriving.
        self.pending = 0
        #: Bytes the queued items account for.
        self.queued = 0

    def put(self, item: _Item, size: int = 0) -> None:
        self.items.put_nowait((item, size))
        self.queued += size

    def feed(self, data: bytes, end_stream: bool) -> int:
        """Queue what ``data`` completes; return the bytes nobody will take
        (to count as taken at once)."""
        if self.call is None:
            if data:
                self.put(data, len(data))
            if end_stream:
                self.put(None)
            return 0
        if self.call.state in _OVER:
            return len(data)  # the call is over: dropped unread
        self.pending += len(data)
        events = self.call.receive_data(data, end_stream)
        if not events:
            return 0
        # The bytes of the messages completed here go with the last event
        # they produced; once the call is over, so does whatever it left unread.
        completed = self.pending if self.call.state in _OVER else self.pending - self.call.buffered
        self.pending -= completed
        for event in events[:-1]:
            self.put(event)
        self.put(events[-1], completed)
        return 0

    def reset(self, error_code: int) -> int:
        """The peer reset the stream; return the bytes of a message that will
        never complete (to count as taken at once)."""
        if self.call is None:
            self.put(None)
            return 0
        for event in self.call.receive_reset(error_code):
            self.put(event)
        dropped, self.pending = self.pending, 0
        return dropped

    def drain(self) -> int:
        """Drop every queued item; return the bytes they and a message still
        arriving accounted for (to count as taken at once)."""
        while not self.items.empty():
            self.items.get_nowait()
        held, self.queued, self.pending = self.queued + self.pending, 0, 0
        return held


class _Protocol(QuicConnectionProtocol):
    def __init__(self, quic: BoundedQuicConnection, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self._bounded = quic
        self.streams: dict[int, _Stream] = {}
        self.lost: _Lost | None = None
        self.handshake_done = asyncio.Event()

    def quic_event_received(self, event: QuicEvent) -> None:
        # No transmit here: aioquic transmits once the datagram is handled.
        if isinstance(event, HandshakeCompleted):
            self.handshake_done.set()
        elif isinstance(event, StreamDataReceived):
            stream = self.streams.get(event.stream_id)
            # Bytes of a stream no call of ours reads (abandoned, or opened
            # by the peer) are taken as they arrive.
            unread = (
                len(event.data) if stream is None else stream.feed(event.data, event.end_stream)
            )
            self._take(event.stream_id, unread)
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._take(event.stream_id, stream.reset(event.error_code))
        elif isinstance(event, ConnectionTerminated):
            self.lost = _Lost(event.reason_phrase or f"QUIC error 0x{event.error_code:x}")
            self.handshake_done.set()
            for stream in self.streams.values():
                stream.put(self.lost)

    def _take(self, stream_id: int, size: int) -> bool:
        """Count ``size`` bytes of ``stream_id`` as taken; True if a new limit is due."""
        return size > 0 and self._bounded.take(stream_id, size)

    async def next_item(self, stream_id: int, stream: _Stream) -> _Item:
        """The stream's next item; its bytes count as taken now, which earns
        the peer new credit once a grant step was taken."""
        item, size = await stream.items.get()
        stream.queued -= size
        if self._take(stream_id, size) and self.lost is None:
            self.transmit()
        return item

    def _fit_connection_window(self) -> None:
        # One stream window for every call receiving (at least two): a call
        # whose caller takes nothing never starves another one.
        calls = max(2, len(self.streams))
        self._bounded.set_connection_window(calls * self._bounded.stream_window)

    def open_stream(self, stream: _Stream, data: bytes, end_stream: bool) -> int:
        if self.lost is not None:
            raise self.lost
        stream_id: int = self._quic.get_next_available_stream_id()
        self.streams[stream_id] = stream
        self._fit_connection_window()
        self._quic.send_stream_data(stream_id, data, end_stream=end_stream)
        self.transmit()
        return stream_id

    def send_more(self, stream_id: int, data: bytes, end_stream: bool) -> bool:
        """Write more on a stream this side keeps open; False once that cannot be."""
        if self.lost is not None:
            return False
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=end_stream)
        except (AssertionError, RuntimeError, ValueError):
            return False  # reset or stopped by the peer meanwhile
        self.transmit()
        return True

    def reset_stream(self, stream_id: int) -> None:
        if self.lost is None:
            with contextlib.suppress(AssertionError, RuntimeError, ValueError):
                self._quic.reset_stream(stream_id, 0)
                self.transmit()

    def send_ping(self) -> None:
        if self.lost is None:
            self._quic.send_ping(0)
            self.transmit()

    def abandon(self, stream_id: int, *, stop: bool = True) -> None:
        """Forget a stream; if its answer is still due (and ``stop``), ask the
        peer to stop sending it.

        What it held, queued or still arriving, counts as taken at once.
        """
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        due = self._take(stream_id, stream.drain())
        self._fit_connection_window()
        if self.lost is not None:
            return
        finished = stream.call is None or stream.call.state in _OVER
        if stop and not finished:
            # aioquic may have dropped the stream already.
            with contextlib.suppress(AssertionError, RuntimeError, ValueError):
                self._quic.stop_stream(stream_id, 0)
                due = True
        if due:
            self.transmit()

    def shutdown(self) -> None:
        """Close without waiting for the peer (it may be gone)."""
        self.close()
        if self._transport is not None:
            self._transport.close()

    async def close_and_wait(self, within: float = 1.0) -> None:
        self.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.wait_closed()
        if self._transport is not None:
            self._transport.close()


class Transport:
    """A QUIC connection to a qpq peer: one bidirectional stream per call.

    Build with :meth:`open`; close with :meth:`close`.
    """

    def __init__(
        self, protocol: _Protocol, limits: Limits, *, peer_calls_only: bool = False
    ) -> None:
        self._protocol = protocol
        self.limits = limits
        self._peer_calls_only = peer_calls_only

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        alpn: str,
        ca_pem: str | None = None,
        pin: str | None = None,
        server_name: str | None = None,
        connect_timeout: float = 5.0,
        idle_timeout: float = 60.0,
        limits: Limits = DEFAULT_LIMITS,
        peer_name: str = "the server",
        in_band_identity_proof: bool = False,
    ) -> Transport:
        """Connect to ``host:port`` and check the peer's certificate.

        The certificate is checked against ``server_name`` (default ``host``)
        and the CAs in ``ca_pem`` (PEM text), or the system's CAs when neither
        ``ca_pem`` nor ``pin`` is given; or, with ``pin`` (SHA-256 hex of the
        peer's certificate DER), pinned instead. ``peer_name`` is how error
        messages call the peer.

        ``in_band_identity_proof=True`` is for another qpq client only (ALPN
        ``qpq-p2p/1``): its self-signed certificate is checked against no CA
        or pin, because the caller proves the peer's identity key over this
        connection before anything else, bound to this connection by the
        certificate's fingerprint (:meth:`peer_certificate_der`), which
        aioquic's CertificateVerify check ties to the peer's TLS key. The
        connection then carries peer calls only (``Access.PEER``, which carry
        no token): any other call raises ``LocalProtocolError`` before a byte
        leaves. It cannot be combined with ``ca_pem`` or ``pin``, nor with
        any other ALPN, so a connection to a server never goes unchecked.

        Raises:
            ConnectionFailedError: no answer within ``connect_timeout``, a TLS
                failure, or a certificate that does not match the CAs or the pin.
            ValueError: both ``ca_pem`` and ``pin`` were given, or
                ``in_band_identity_proof`` with either of them or another ALPN.
        """
        if ca_pem is not None and pin is not None:
            raise ValueError("give ca_pem or pin, not both")
        if in_band_identity_proof and (ca_pem is not None or pin is not None):
            raise ValueError("in_band_identity_proof replaces ca_pem and pin; give neither")
        if in_band_identity_proof and alpn != PEER_ALPN:
            raise ValueError(f"in_band_identity_proof is only for ALPN {PEER_ALPN}")
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=[alpn],
            server_name=server_name or host,
            idle_timeout=idle_timeout,
        )
        if in_band_identity_proof:
            # The certificate names nobody: the peers prove their identity
            # keys over the connection instead, bound to this certificate
            # (whose CertificateVerify aioquic always checks), before any
            # other call. Nothing here trusts it.
            configuration.verify_mode = ssl.CERT_NONE
        elif pin is None:
            configuration.verify_mode = ssl.CERT_REQUIRED
            if ca_pem is not None:
                configuration.cadata = ca_pem.encode("ascii")
        else:
            # The pin replaces the chain check; it is compared right after the
            # handshake (whose CertificateVerify aioquic always checks, so the
            # peer holds the key), before any byte of a call is sent.
            configuration.verify_mode = ssl.CERT_NONE
        where = f"{peer_name} at {format_host_port(host, port)}"
        try:
            protocol = await _connect(host, port, configuration, limits, connect_timeout)
        except TimeoutError:
            raise ConnectionFailedError(
                f"no answer from {where} within {connect_timeout:g} s (is it running?)"
            ) from None
        except OSError as error:
            raise ConnectionFailedError(
                f"cannot reach {where}: {error.strerror or error}"
            ) from error
        if protocol.lost is not None:
            protocol.shutdown()
            raise ConnectionFailedError(
                f"the TLS handshake with {where} failed ({protocol.lost.reason}); "
                "check the CA certificate or the pin"
            )
        if pin is not None:
            der = peer_certificate_der(protocol._quic)
            if der is None or not hmac.compare_digest(certificate_fingerprint(der), pin.lower()):
                protocol.shutdown()
                raise ConnectionFailedError(
                    f"{where} presented a certificate that does not match the pinned fingerprint"
                )
        return cls(protocol, limits, peer_calls_only=in_band_identity_proof)

    async def call(self, request: Request, *, answer_within: float) -> Response:
        """Send one request; return its answer (a result or an ErrorResponse).

        Raises:
            ConnectionFailedError: the connection was lost, or no answer within
                ``answer_within`` seconds.
            RemoteProtocolError: the peer broke the protocol on this stream.
            LocalProtocolError: not a peer call on a connection opened with
                ``in_band_identity_proof``.
        """
        self._check_call(request)
        call = ClientCall(request, self.limits)
        stream = _Stream(call)
        stream_id = self._protocol.open_stream(stream, call.request_bytes(), end_stream=True)
        try:
            async with asyncio.timeout(answer_within):
                while True:
                    event = await self._next(stream_id, stream)
                    if isinstance(event, ResponseReceived):
                        return event.response
        except TimeoutError:
            raise ConnectionFailedError(f"no answer within {answer_within:g} s") from None
        finally:
            self._protocol.abandon(stream_id)

    async def stream(self, request: Request) -> AsyncGenerator[Response | Event]:
        """Send a streaming request; yield its answer, then each event, until the peer ends it.

        Leaving the iteration early resets the stream, which ends it on the peer.
        """
        self._check_call(request)
        call = ClientCall(request, self.limits)
        stream = _Stream(call)
        stream_id = self._protocol.open_stream(stream, call.request_bytes(), end_stream=True)
        try:
            while True:
                event = await self._next(stream_id, stream)
                if isinstance(event, CallCompleted):
                    return
                if isinstance(event, ResponseReceived):
                    yield event.response
                elif isinstance(event, EventReceived):
                    yield event.event
        finally:
            if call.state not in (CallState.DONE, CallState.FAILED):
                self._protocol.reset_stream(stream_id)
            self._protocol.abandon(stream_id)

    def open_acking(self, request: Request) -> AckingStream:
        """Send a SubscribeWithAcks request, keeping the stream open for acknowledgements.

        Iterate the result for its answer, then each event; close it with
        :meth:`AckingStream.aclose`.
        """
        self._check_call(request)
        call = ClientCall(request, self.limits)
        if not call.acking:
            raise LocalProtocolError(f"{type(request.call).__name__} sends no acknowledgements")
        stream = _Stream(call)
        stream_id = self._protocol.open_stream(stream, call.request_bytes(), end_stream=False)
        return AckingStream(self, call, stream, stream_id)

    async def raw(self, data: bytes, *, end_stream: bool = True, reset: bool = False) -> bytes:
        """Write ``data`` on a new stream, outside any state machine; return all bytes answered.

        For conformance and fault tests. With ``end_stream=False`` the stream
        stays open (a request that never completes); with ``reset=True`` it
        is reset right after writing and nothing is awaited.
        """
        stream = _Stream(None)
        stream_id = self._protocol.open_stream(stream, data, end_stream=end_stream)
        try:
            if reset:
                self._protocol.reset_stream(stream_id)
                return b""
            received = bytearray()
            while (item := await self._protocol.next_item(stream_id, stream)) is not None:
                if isinstance(item, _Lost):
                    return bytes(received)
                if isinstance(item, bytes):
                    received += item
            return bytes(received)
        finally:
            self._protocol.abandon(stream_id)

    def _check_call(self, request: Request) -> None:
        if self._peer_calls_only and ACCESS[type(request.call)] is not Access.PEER:
            raise LocalProtocolError(
                f"{type(request.call).__name__} cannot go over a peer connection: "
                "it carries peer calls only"
            )

    async def _next(self, stream_id: int, stream: _Stream) -> ClientEvent:
        item = await self._protocol.next_item(stream_id, stream)
        if isinstance(item, _Lost):
            raise item
        if isinstance(item, CallFailed):
            raise item.error
        if item is None or isinstance(item, bytes):  # pragma: no cover - raw streams only
            raise ConnectionFailedError("the stream ended")
        return item

    def ping(self) -> None:
        """Send a PING (RFC 9000 §19.2), without waiting: its acknowledgement keeps
        a connection open that only waits on a stream (a subscription) through
        the idle timeout (RFC 9000 §10.1.2)."""
        self._protocol.send_ping()

    def peer_certificate_der(self) -> bytes | None:
        """The DER certificate the peer presented."""
        return peer_certificate_der(self._protocol._quic)

    @property
    def closed_reason(self) -> str | None:
        """Why the connection ended (the peer's reason phrase), or None while open."""
        return None if self._protocol.lost is None else self._protocol.lost.reason

    async def wait_closed(self) -> None:
        """Return once the connection has ended."""
        await self._protocol.wait_closed()

    @property
    def quic(self) -> Any:
        """The underlying aioquic protocol, for tests that must reach below the adapter."""
        return self._protocol

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        await self._protocol.close_and_wait()


class AckingStream:
    """A SubscribeWithAcks call: its answer and events in, acknowledgements out.

    Build with :meth:`Transport.open_acking`.
    """

    def __init__(self, transport: Transport, call: ClientCall, stream: _Stream, stream_id: int):
        self._transport = transport
        self._call = call
        self._stream = stream
        self._stream_id = stream_id

    def __aiter__(self) -> AckingStream:
        return self

    async def __anext__(self) -> Response | Event:
        while True:
            event = await self._transport._next(self._stream_id, self._stream)
            if isinstance(event, CallCompleted):
                raise StopAsyncIteration
            if isinstance(event, ResponseReceived):
                return event.response
            if isinstance(event, EventReceived):
                return event.event

    def ack(self, up_to_seq: int) -> bool:
        """Write an acknowledgement of every message up to ``up_to_seq``; False
        when the stream can take none any more (the call is over)."""
        if not self._call.sending or self._call.state in _OVER:
            return False
        data = self._call.ack_bytes(up_to_seq)
        return self._transport._protocol.send_more(self._stream_id, data, end_stream=False)

    async def aclose(self) -> None:
        """End the call: our side ends (FIN), which ends the subscription on the
        peer; a call that failed is reset instead."""
        protocol = self._transport._protocol
        if self._call.sending and self._call.state is not CallState.FAILED:
            # Our FIN ends the subscription after the acknowledgements written
            # before it, which a reset could discard; what the server still
            # pushes until it sees the FIN is taken unread.
            self._call.end_sending()
            protocol.send_more(self._stream_id, b"", end_stream=True)
            protocol.abandon(self._stream_id, stop=False)
            return
        if self._call.state is not CallState.DONE:
            protocol.reset_stream(self._stream_id)
        protocol.abandon(self._stream_id)


async def _connect(
    host: str, port: int, configuration: QuicConfiguration, limits: Limits, within: float
) -> _Protocol:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))  # noqa: S104 - ephemeral client port
    except OSError:
        sock.close()
        raise
    # Credit is granted as the caller takes events, a grant step at a time:
    # so the peer may always send one whole message of the largest size past
    # what was taken (the module docstring says what holds).
    stream_window = limits.max_message_bytes + GRANT_STEP
    connection = BoundedQuicConnection(
        configuration=configuration,
        stream_window=stream_window,
        connection_window=2 * stream_window,
        take_on_delivery=False,
        grant_step=GRANT_STEP,
    )
    _, protocol = await loop.create_datagram_endpoint(lambda: _Protocol(connection), sock=sock)
    if not isinstance(protocol, _Protocol):  # pragma: no cover - the factory above
        raise ConnectionFailedError("unexpected transport protocol")
    protocol.connect(sockaddr)
    try:
        async with asyncio.timeout(within):
            await protocol.handshake_done.wait()
    except BaseException:
        # Timed out, or the caller gave up (a late direct attempt cancelled
        # when its node closes): the socket goes with it.
        protocol.shutdown()
        raise
    return protocol
