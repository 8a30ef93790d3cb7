"""A small qpq client over aioquic: the server's health check and test driver.

It is deliberately minimal (one call per stream through
:class:`qpq_proto.ClientCall`, a subscribe iterator, raw streams for abuse
tests); the full client library lives in qpq-client. The certificate is
verified against a CA file, or pinned by the SHA-256 of its DER encoding
*before* any request (and so the token) is sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from qpq_proto import (
    ALPN,
    DEFAULT_LIMITS,
    Authenticate,
    CallCompleted,
    CallFailed,
    Challenge,
    ChallengeNonce,
    ClientCall,
    ClientEvent,
    Envelope,
    ErrorResponse,
    EventReceived,
    Limits,
    Request,
    ResponseReceived,
    Result,
    Subscribe,
    challenge_transcript,
)
from qpq_proto.errors import RemoteProtocolError, StreamResetError
from qpq_server._aioquic import (
    ConnectionTerminated,
    QuicConfiguration,
    QuicConnectionProtocol,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
    connect,
    peer_certificate_der,
)

__all__ = ["CertificatePinError", "QuicCallClient", "Signer", "open_client"]

_R = TypeVar("_R")


class CertificatePinError(RemoteProtocolError):
    """The server's certificate does not have the pinned fingerprint."""


class Signer(Protocol):
    """An identity: ``qpq_core.Identity`` or anything with the same two members."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(slots=True)
class _PendingCall:
    call: ClientCall | None
    events: asyncio.Queue[ClientEvent | bytes | None] = field(default_factory=asyncio.Queue)


class _ClientProtocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: dict[int, _PendingCall] = {}
        self.closed_reason: str | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            pending = self.pending.get(event.stream_id)
            if pending is None:
                return
            if pending.call is None:  # raw stream: hand the bytes over as they are
                pending.events.put_nowait(event.data)
                if event.end_stream:
                    pending.events.put_nowait(None)
                return
            for call_event in pending.call.receive_data(event.data, event.end_stream):
                pending.events.put_nowait(call_event)
        elif isinstance(event, StreamReset):
            pending = self.pending.get(event.stream_id)
            if pending is not None:
                if pending.call is None:
                    pending.events.put_nowait(None)
                else:
                    for call_event in pending.call.receive_reset(event.error_code):
                        pending.events.put_nowait(call_event)
        elif isinstance(event, ConnectionTerminated):
            self.closed_reason = event.reason_phrase or f"error code {event.error_code}"
            for pending in self.pending.values():
                pending.events.put_nowait(None)


class QuicCallClient:
    """Calls on one QUIC connection; one stream per call."""

    def __init__(self, protocol: _ClientProtocol, token: str, limits: Limits) -> None:
        self._protocol = protocol
        self.token = token
        self.limits = limits

    @property
    def protocol(self) -> Any:
        """The underlying aioquic protocol (for tests that need it)."""
        return self._protocol

    def _open(self, call: ClientCall | None) -> tuple[int, _PendingCall]:
        if self._protocol.closed_reason is not None:
            raise StreamResetError(f"connection closed: {self._protocol.closed_reason}")
        stream_id = self._protocol._quic.get_next_available_stream_id()
        pending = _PendingCall(call)
        self._protocol.pending[stream_id] = pending
        return stream_id, pending

    def _send(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self._protocol._quic.send_stream_data(stream_id, data, end_stream=end_stream)
        self._protocol.transmit()

    async def _next(self, pending: _PendingCall) -> ClientEvent:
        item = await pending.events.get()
        if item is None or isinstance(item, bytes):
            raise StreamResetError(
                f"connection closed: {self._protocol.closed_reason or 'stream ended'}"
            )
        return item

    async def request(self, request: Request) -> Result | ErrorResponse:
        """Send ``request``; return the result or the ErrorResponse as received."""
        call = ClientCall(request, self.limits)
        stream_id, pending = self._open(call)
        try:
            self._send(stream_id, call.request_bytes(), end_stream=True)
            while True:
                event = await self._next(pending)
                if isinstance(event, ResponseReceived):
                    response = event.response
                    # Wait for the clean end of the stream too.
                    end = await self._next(pending)
                    if isinstance(end, CallFailed):
                        raise end.error
                    return response
                if isinstance(event, CallFailed):
                    raise event.error
        finally:
            self._protocol.pending.pop(stream_id, None)

    async def call(self, call: Any, *, token: str | None = None) -> Any:
        """Send ``call`` with the client's token; return its result or raise ServiceError."""
        response = await self.request(
            Request(call=call, token=self.token if token is None else token)
        )
        if isinstance(response, ErrorResponse):
            raise response.to_exception()
        return response

    async def authenticate(self, identity: Signer) -> None:
        """Prove ``identity`` on this connection (Challenge, then Authenticate)."""
        nonce: ChallengeNonce = await self.call(Challenge())
        key = identity.public_key
        signature = identity.sign(challenge_transcript(nonce.nonce, key))
        await self.call(Authenticate(identity_key=key, signature=signature))

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Envelope | ErrorResponse]]:
        """Open a subscribe stream; yields an iterator of pushed events.

        Raises the ServiceError if the server refuses the subscription.
        Leaving the block resets the stream, which ends it on the server.
        """
        call = ClientCall(Request(call=Subscribe(), token=self.token), self.limits)
        stream_id, pending = self._open(call)
        self._send(stream_id, call.request_bytes(), end_stream=True)
        try:
            first = await self._next(pending)
            if isinstance(first, CallFailed):
                raise first.error
            if isinstance(first, ResponseReceived) and isinstance(first.response, ErrorResponse):
                raise first.response.to_exception()

            async def events() -> AsyncIterator[Envelope | ErrorResponse]:
                while True:
                    event = await self._next(pending)
                    if isinstance(event, EventReceived):
                        yield event.event
                    elif isinstance(event, CallFailed):
                        raise event.error
                    elif isinstance(event, CallCompleted):
                        return

            yield events()
        finally:
            self._protocol.pending.pop(stream_id, None)
            if self._protocol.closed_reason is None:
                try:
                    self._protocol._quic.reset_stream(stream_id, 0)
                    self._protocol.transmit()
                except (RuntimeError, ValueError, AssertionError):
                    pass  # already finished

    async def raw(self, data: bytes, *, end_stream: bool = True, reset: bool = False) -> bytes:
        """Write raw bytes on a new stream; return all bytes the server answered.

        With ``end_stream=False`` the stream is left open (a truncated
        request); with ``reset=True`` it is reset right after writing.
        """
        stream_id, pending = self._open(None)
        try:
            self._send(stream_id, data, end_stream=end_stream)
            if reset:
                self._protocol._quic.reset_stream(stream_id, 0)
                self._protocol.transmit()
                return b""
            received = bytearray()
            while True:
                item = await pending.events.get()
                if item is None:
                    return bytes(received)
                if isinstance(item, bytes):
                    received += item
        finally:
            self._protocol.pending.pop(stream_id, None)


def fingerprint_der(der: bytes) -> str:
    """SHA-256 hex of a certificate's DER encoding."""
    return hashlib.sha256(der).hexdigest()


@asynccontextmanager
async def open_client(
    host: str,
    port: int,
    *,
    token: str = "",
    ca_cert: Path | None = None,
    pin: str | None = None,
    server_name: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    idle_timeout: float = 120.0,
) -> AsyncIterator[QuicCallClient]:
    """Connect to a qpq server and yield a :class:`QuicCallClient`.

    Args:
        host, port: where the server listens.
        token: the server access token sent with every call.
        ca_cert: trust this PEM certificate (or CA bundle) instead of the system's.
        pin: accept exactly the certificate with this SHA-256 DER fingerprint (hex).
        server_name: name to verify (defaults to ``host``).

    Raises:
        CertificatePinError: the pin does not match (nothing was sent).
    """
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        server_name=server_name or host,
        idle_timeout=idle_timeout,
        max_stream_data=limits.max_message_bytes,
        max_data=2 * limits.max_message_bytes,
    )
    if pin is not None:
        # Chain checks are replaced by the pin below; TLS still proves key possession.
        configuration.verify_mode = ssl.CERT_NONE
    elif ca_cert is not None:
        configuration.load_verify_locations(cafile=str(ca_cert))
    async with connect(
        host, port, configuration=configuration, create_protocol=_ClientProtocol
    ) as protocol:
        if not isinstance(protocol, _ClientProtocol):
            raise TypeError("unexpected protocol class")
        if pin is not None:
            der = peer_certificate_der(protocol)
            if der is None or not hmac.compare_digest(fingerprint_der(der), pin.lower()):
                protocol.close()
                raise CertificatePinError("the server certificate does not match the pin")
        yield QuicCallClient(protocol, token, limits)
