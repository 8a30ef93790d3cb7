"""Sans-I/O state machines for one call on one bidirectional QUIC stream.

Neither class does I/O: adapters feed them what arrived on the stream (data,
end of stream, reset) and get back events, and ask them for the bytes to send.
Every way a peer can misbehave (partial data, oversize, garbage, early end,
trailing bytes, reset) ends in one defined outcome.

Client side::

    call = ClientCall(request)
    send(call.request_bytes(), end_stream=True)
    for event in call.receive_data(data, end_stream): ...
        # ResponseReceived, EventReceived, CallCompleted or CallFailed

Server side::

    call = ServerCall()
    for event in call.receive_data(data, end_stream): ...
        # RequestReceived -> handle, then send(call.respond(result), call.finished)
        # RequestRejected -> send(call.respond(ErrorResponse.from_exception(e)), True)
        # CallAborted     -> the peer reset the stream; send nothing
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qpq_proto import _messages as m
from qpq_proto._codec import (
    decode_event,
    decode_request,
    decode_response,
    encode_event,
    encode_request,
    encode_response,
)
from qpq_proto._framing import MessageSplitter
from qpq_proto._limits import DEFAULT_LIMITS, Limits
from qpq_proto.errors import (
    LocalProtocolError,
    MalformedMessageError,
    MalformedRequestError,
    MessageTooLargeError,
    PayloadTooLargeError,
    RemoteProtocolError,
    ServiceError,
    StreamResetError,
    TruncatedMessageError,
)

__all__ = [
    "CallAborted",
    "CallCompleted",
    "CallFailed",
    "CallState",
    "ClientCall",
    "ClientEvent",
    "EventReceived",
    "RequestReceived",
    "RequestRejected",
    "ResponseReceived",
    "ServerCall",
    "ServerEvent",
]


class CallState(enum.Enum):
    """Where a call stands. Client: WAITING → (STREAMING) → DONE | FAILED.
    Server: WAITING → HANDLING → (STREAMING) → DONE | FAILED."""

    WAITING = "waiting"
    HANDLING = "handling"
    STREAMING = "streaming"
    DONE = "done"
    FAILED = "failed"


# ---- client events --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """The call's response (a result or an ErrorResponse)."""

    response: m.Response


@dataclass(frozen=True, slots=True)
class EventReceived:
    """One event on a subscribe stream."""

    event: m.Event


@dataclass(frozen=True, slots=True)
class CallCompleted:
    """The server ended the stream cleanly after a complete answer."""


@dataclass(frozen=True, slots=True)
class CallFailed:
    """The server broke the protocol on this stream, or reset it."""

    error: RemoteProtocolError


ClientEvent = ResponseReceived | EventReceived | CallCompleted | CallFailed


class ClientCall:
    """The client side of one call.

    Args:
        request: the request to send.
        limits: caps applied to what the server sends back.
    """

    def __init__(self, request: m.Request, limits: Limits = DEFAULT_LIMITS) -> None:
        self.request = request
        self.streaming = isinstance(request.call, m.Subscribe)
        self.state = CallState.WAITING
        self._limits = limits
        self._splitter = MessageSplitter(limits.max_message_bytes)
        self._expected = m.RESULT_OF[type(request.call)]
        self._answered = False
        self._sent = False

    def request_bytes(self) -> bytes:
        """The bytes to write, followed by end of stream. Call once."""
        if self._sent:
            raise LocalProtocolError("the request was already sent")
        self._sent = True
        return encode_request(self.request)

    def receive_data(self, data: bytes, end_stream: bool = False) -> list[ClientEvent]:
        """Feed bytes from the stream; ``end_stream`` when the server sent FIN."""
        if self.state in (CallState.DONE, CallState.FAILED):
            return []
        events: list[ClientEvent] = []
        try:
            for message in self._splitter.feed(data):
                events.append(self._on_message(message))
        except RemoteProtocolError as error:
            return [*events, self._fail(error)]
        if end_stream:
            events.append(self._on_end())
        return events

    def receive_reset(self, error_code: int = 0) -> list[ClientEvent]:
        """The server reset the stream."""
        if self.state in (CallState.DONE, CallState.FAILED):
            return []
        return [self._fail(StreamResetError("the server reset the stream", error_code))]

    def _on_message(self, message: bytes) -> ClientEvent:
        if self.state is CallState.STREAMING:
            event = decode_event(message, self._limits)
            if isinstance(event, m.ErrorResponse):
                self._answered = True
                self.state = CallState.HANDLING  # only end of stream may follow
            return EventReceived(event)
        if self._answered:
            raise MalformedMessageError("unexpected data after the response")
        response = decode_response(message, self._limits)
        if not isinstance(response, m.ErrorResponse | self._expected):
            raise MalformedMessageError(
                f"{type(response).__name__} does not answer {type(self.request.call).__name__}"
            )
        if isinstance(response, m.Subscribed):
            self.state = CallState.STREAMING
        else:
            self._answered = True
        return ResponseReceived(response)

    def _on_end(self) -> ClientEvent:
        if self._splitter.buffered:
            return self._fail(TruncatedMessageError("the stream ended inside a message"))
        if not self._answered and self.state is not CallState.STREAMING:
            return self._fail(TruncatedMessageError("the stream ended without a response"))
        self.state = CallState.DONE
        return CallCompleted()

    def _fail(self, error: RemoteProtocolError) -> CallFailed:
        self.state = CallState.FAILED
        return CallFailed(error)


# ---- server events --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A complete, valid request; handle it and respond."""

    request: m.Request


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """The request cannot be handled; respond with this coded error."""

    error: ServiceError


@dataclass(frozen=True, slots=True)
class CallAborted:
    """The client reset the stream; nothing more is sent."""

    error: StreamResetError


ServerEvent = RequestReceived | RequestRejected | CallAborted


class ServerCall:
    """The server side of one call.

    Args:
        limits: caps applied to the incoming request.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.state = CallState.WAITING
        self._limits = limits
        self._splitter = MessageSplitter(limits.max_message_bytes)
        self._message: bytes | None = None
        self._request: m.Request | None = None
        self._rejection_answered = False
        self._reset = False

    @property
    def finished(self) -> bool:
        """True once the last bytes to send were produced: end the stream."""
        return self.state in (CallState.DONE, CallState.FAILED)

    def receive_data(self, data: bytes, end_stream: bool = False) -> list[ServerEvent]:
        """Feed bytes from the stream; ``end_stream`` when the client sent FIN."""
        if self.state is not CallState.WAITING:
            return []
        try:
            messages = self._splitter.feed(data)
        except MessageTooLargeError:
            return [self._reject(PayloadTooLargeError("request exceeds the size limit"))]
        except MalformedMessageError:
            return [self._reject(MalformedRequestError("request framing is invalid"))]
        if len(messages) > 1 or (messages and self._message is not None):
            return [self._reject(MalformedRequestError("one request per stream"))]
        if messages:
            self._message = messages[0]
        if not end_stream:
            return []
        if self._message is None:
            return [self._reject(MalformedRequestError("the stream ended inside the request"))]
        if self._splitter.buffered:
            return [self._reject(MalformedRequestError("trailing bytes after the request"))]
        try:
            request = decode_request(self._message, self._limits)
        except ServiceError as error:
            return [self._reject(error)]
        self.state = CallState.HANDLING
        self._request = request
        return [RequestReceived(request)]

    def receive_reset(self, error_code: int = 0) -> list[ServerEvent]:
        """The client reset the stream."""
        if self.finished:
            return []
        self.state = CallState.FAILED
        self._reset = True
        return [CallAborted(StreamResetError("the client reset the stream", error_code))]

    def respond(self, response: m.Response) -> bytes:
        """Bytes of the response. Afterwards :attr:`finished` says whether to end the stream."""
        if self.state is CallState.FAILED and isinstance(response, m.ErrorResponse):
            # Answering a rejected request: allowed once, unless the client reset.
            if self._rejection_answered or self._reset:
                raise LocalProtocolError("nothing more may be sent on this stream")
            self._rejection_answered = True
            return encode_response(response)
        if self.state is not CallState.HANDLING or self._request is None:
            raise LocalProtocolError(f"cannot respond in state {self.state.value}")
        expected = m.RESULT_OF[type(self._request.call)]
        if not isinstance(response, m.ErrorResponse | expected):
            # The client would fail the call on it; refuse to send it at all.
            raise LocalProtocolError(
                f"{type(response).__name__} does not answer {type(self._request.call).__name__}"
            )
        data = encode_response(response)
        self.state = CallState.STREAMING if isinstance(response, m.Subscribed) else CallState.DONE
        return data

    def push(self, event: m.Event) -> bytes:
        """Bytes of one event on a subscribe stream; an ErrorResponse ends it."""
        if self.state is not CallState.STREAMING:
            raise LocalProtocolError(f"cannot push events in state {self.state.value}")
        if isinstance(event, m.ErrorResponse):
            self.state = CallState.DONE
        return encode_event(event)

    def close(self) -> None:
        """End a subscribe stream without an error (the adapter sends FIN)."""
        if self.state is not CallState.STREAMING:
            raise LocalProtocolError(f"cannot close in state {self.state.value}")
        self.state = CallState.DONE

    def _reject(self, error: ServiceError) -> RequestRejected:
        self.state = CallState.FAILED
        return RequestRejected(error)
