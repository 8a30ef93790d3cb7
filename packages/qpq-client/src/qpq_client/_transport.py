"""The one aioquic adapter of the client: QUIC in, qpq_proto state machines out.

It makes no protocol decisions. Each call opens a client bidirectional
stream, writes the bytes :class:`qpq_proto.ClientCall` produces, ends its
side, and feeds what arrives back into that state machine. Every aioquic or
socket failure becomes :class:`ConnectionFailedError` here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)
from cryptography.hazmat.primitives.serialization import Encoding

from qpq_client._config import ServerAddress, Trust, fingerprint_of_der
from qpq_client._errors import ConnectionFailedError
from qpq_proto import (
    ALPN,
    DEFAULT_LIMITS,
    CallCompleted,
    CallFailed,
    ClientCall,
    ClientEvent,
    EventReceived,
    Limits,
    Request,
    ResponseReceived,
)
from qpq_proto import Event as WireEvent
from qpq_proto import Response as WireResponse

__all__ = ["Transport"]

_LOST = "the connection to the server was lost"


class _Stream:
    """One call's state machine and the queue its events land in."""

    def __init__(self, call: ClientCall) -> None:
        self.call = call
        self.events: asyncio.Queue[ClientEvent | ConnectionFailedError] = asyncio.Queue()


class _Terminated(ConnectionFailedError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"{_LOST} ({reason})")
        self.reason = reason


class _Protocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams: dict[int, _Stream] = {}
        self.terminated: _Terminated | None = None
        self.handshake_done = asyncio.Event()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.handshake_done.set()
        elif isinstance(event, StreamDataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._deliver(stream, stream.call.receive_data(event.data, event.end_stream))
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._deliver(stream, stream.call.receive_reset(event.error_code))
        elif isinstance(event, ConnectionTerminated):
            reason = event.reason_phrase or f"QUIC error 0x{event.error_code:x}"
            self.terminated = _Terminated(reason)
            self.handshake_done.set()
            for stream in self.streams.values():
                stream.events.put_nowait(self.terminated)

    @staticmethod
    def _deliver(stream: _Stream, events: list[ClientEvent]) -> None:
        for item in events:
            stream.events.put_nowait(item)

    def open_stream(self, call: ClientCall) -> int:
        if self.terminated is not None:
            raise self.terminated
        stream_id = self._quic.get_next_available_stream_id()
        self.streams[stream_id] = _Stream(call)
        self._quic.send_stream_data(stream_id, call.request_bytes(), end_stream=True)
        self.transmit()
        return stream_id

    def abandon(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None or self.terminated is not None:
            return
        if stream.call.state.value not in ("done", "failed"):
            with contextlib.suppress(Exception):  # the stream may already be gone in aioquic
                self._quic.stop_stream(stream_id, 0)
                self.transmit()

    def shutdown(self) -> None:
        """Close without waiting for the peer (it may be gone)."""
        self.close()
        if self._transport is not None:
            self._transport.close()

    async def close_and_wait(self) -> None:
        self.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self.wait_closed()
        if self._transport is not None:
            self._transport.close()

    def peer_certificate_der(self) -> bytes | None:
        # aioquic exposes the verified peer certificate only on its TLS context;
        # pinning needs it, so read it here, in the one module that knows aioquic.
        certificate = getattr(getattr(self._quic, "tls", None), "_peer_certificate", None)
        if certificate is None:
            return None
        der: bytes = certificate.public_bytes(Encoding.DER)
        return der


class Transport:
    """A QUIC connection to a qpq server; one bidirectional stream per call.

    Use :meth:`open`; close with :meth:`close` (or ``async with``).
    """

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol
        self.limits: Limits = DEFAULT_LIMITS

    @classmethod
    async def open(
        cls,
        address: ServerAddress,
        trust: Trust,
        *,
        connect_timeout: float = 5.0,
        limits: Limits = DEFAULT_LIMITS,
    ) -> Transport:
        """Connect and prove the server's certificate against ``trust``.

        Raises:
            ConnectionFailedError: no answer within ``connect_timeout``, a TLS failure, or a
                certificate that does not match the CA or the pin.
        """
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=[ALPN],
            server_name=address.host,
            idle_timeout=60.0,
            max_datagram_frame_size=None,
        )
        if trust.ca_pem is not None:
            configuration.cadata = trust.ca_pem.encode("ascii")
            configuration.verify_mode = ssl.CERT_REQUIRED
        else:
            # The pin is checked on the leaf certificate right after the
            # handshake (whose CertificateVerify aioquic always checks), before
            # any byte, token included, is sent.
            configuration.verify_mode = ssl.CERT_NONE
        where = f"{address}"
        try:
            protocol = await _connect(address, configuration, connect_timeout)
        except TimeoutError:
            raise ConnectionFailedError(
                f"no answer from the server at {where} within {connect_timeout:g} s"
                " (is it running?)"
            ) from None
        except OSError as error:
            raise ConnectionFailedError(
                f"cannot reach the server at {where}: {error.strerror or error}"
            ) from error
        if protocol.terminated is not None:
            protocol.shutdown()
            raise ConnectionFailedError(
                f"TLS handshake with the server at {where} failed "
                f"({protocol.terminated.reason}); check --ca-cert / --pin"
            )
        if trust.pin is not None:
            der = protocol.peer_certificate_der()
            if der is None or fingerprint_of_der(der) != trust.pin:
                protocol.shutdown()
                raise ConnectionFailedError(
                    f"the server at {where} presented a certificate that does not match "
                    "the pinned fingerprint"
                )
        transport = cls(protocol)
        transport.limits = limits
        return transport

    async def call(self, request: Request, answer_within: float) -> WireResponse:
        """Send one request, return its response (a result or an ErrorResponse).

        Raises:
            ConnectionFailedError: connection lost or no answer within ``timeout``.
            RemoteProtocolError: the server broke the protocol on this stream.
        """
        call = ClientCall(request, self.limits)
        stream_id = self._protocol.open_stream(call)
        try:
            async with asyncio.timeout(answer_within):
                while True:
                    item = await self._protocol.streams[stream_id].events.get()
                    if isinstance(item, ConnectionFailedError):
                        raise item
                    if isinstance(item, CallFailed):
                        raise item.error
                    if isinstance(item, ResponseReceived):
                        return item.response
        except TimeoutError:
            message = f"the server did not answer within {answer_within:g} s"
            raise ConnectionFailedError(message) from None
        finally:
            self._protocol.abandon(stream_id)

    async def stream(self, request: Request) -> AsyncIterator[WireResponse | WireEvent]:
        """Send a streaming request; yield its response, then each event.

        The iterator ends when the server ends the stream; leaving it early
        asks the server to stop.
        """
        call = ClientCall(request, self.limits)
        stream_id = self._protocol.open_stream(call)
        try:
            while True:
                item = await self._protocol.streams[stream_id].events.get()
                if isinstance(item, ConnectionFailedError):
                    raise item
                if isinstance(item, CallFailed):
                    raise item.error
                if isinstance(item, CallCompleted):
                    return
                if isinstance(item, ResponseReceived):
                    yield item.response
                elif isinstance(item, EventReceived):
                    yield item.event
        finally:
            self._protocol.abandon(stream_id)

    @property
    def closed(self) -> bool:
        """True once the connection ended."""
        return self._protocol.terminated is not None

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        await self._protocol.close_and_wait()

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _connect(
    address: ServerAddress, configuration: QuicConfiguration, within: float
) -> _Protocol:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))  # noqa: S104 - ephemeral client port
    except OSError:
        sock.close()
        raise
    connection = QuicConnection(configuration=configuration)
    _, protocol = await loop.create_datagram_endpoint(lambda: _Protocol(connection), sock=sock)
    if not isinstance(protocol, _Protocol):  # pragma: no cover - the factory above
        raise ConnectionFailedError("unexpected transport protocol")
    protocol.connect(sockaddr)
    try:
        async with asyncio.timeout(within):
            await protocol.handshake_done.wait()
    except TimeoutError:
        protocol.shutdown()
        raise
    return protocol
