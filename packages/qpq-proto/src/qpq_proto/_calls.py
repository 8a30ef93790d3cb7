"""Sans-I/O state machines for one call on one bidirectional QUIC stream.

Neither class does I/O: adapters feed them what arrived on the stream (data,
end of stream, reset) and get back events, and ask them for the bytes to send.
Every way a peer can misbehave (partial data, oversize, garbage, early end,
trailing bytes, reset) ends in one defined outcome. Which moves are legal in
which state is written once, in :data:`_TRANSITIONS` (as h11's ``_state.py``);
every byte either side sends comes out of a move in that table.

Client side::

    call = ClientCall(request)
    send(call.request_bytes(), end_stream=True)
    for event in call.receive_data(data, end_stream): ...
        # ResponseReceived, EventReceived, CallCompleted or CallFailed

Server side::

    call = ServerCall()
    for event in call.receive_data(data, end_stream): ...
        # RequestReceived -> handle, then send(call.respond(result), call.finished)
        # RequestRejected -> send(call.reject(event.error), end_stream=True)
        # CallAborted     -> the peer reset the stream; send nothing
    # A request still arriving can be refused too (a transport limit):
    send(call.reject(PayloadTooLargeError(...)), end_stream=True)
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


# ---- the transition table --------------------------------------------------


class _State(enum.Enum):
    """The table's states: finer than :class:`CallState`, which :data:`_PUBLIC` folds them to."""

    # Members are singletons: identity hashing keeps the table lookups of
    # every call in C (Enum's own __hash__ is a Python function).
    __hash__ = object.__hash__

    # The client's request (its own side of the stream).
    UNSENT = "unsent"
    SENT = "sent"
    # What the client receives.
    AWAITING_ANSWER = "awaiting answer"
    ANSWERED = "answered"  # a unary answer is in: only end of stream may follow
    RECEIVING_EVENTS = "receiving events"
    EVENTS_ENDED = "events ended"  # an error event ended the stream: only end of stream
    # The server.
    RECEIVING_REQUEST = "receiving request"
    REJECTED = "rejected"  # the request is refused: one coded error is owed
    HANDLING = "handling"
    PUSHING_EVENTS = "pushing events"
    # Both, terminal: nothing more is sent or read.
    DONE = "done"
    FAILED = "failed"


class _Input(enum.Enum):
    """What moves a call: the peer's input (``PEER_*``) or a local action."""

    __hash__ = object.__hash__  # as _State's

    SEND_REQUEST = "send the request"
    # Client, from the server.
    PEER_RESPONSE = "response"
    PEER_SUBSCRIBED = "subscribed"
    PEER_EVENT = "event"
    PEER_ERROR_EVENT = "error event"
    PEER_END = "end of stream"
    PEER_BROKE = "protocol violation"  # also a stream reset by the server
    # Server, from the client.
    PEER_REQUEST = "request"
    PEER_BAD_REQUEST = "unusable request"
    PEER_RESET = "reset"
    # Server, local.
    REJECT = "reject the request"
    RESPOND_RESULT = "respond with a result"
    RESPOND_ERROR = "respond with an error"
    ACCEPT_SUBSCRIBE = "respond Subscribed"
    PUSH = "push an event"
    PUSH_ERROR = "push an error event"
    CLOSE = "close"


_S, _I = _State, _Input

#: Every legal move: ``{state: {input: next state}}``. An input missing from a
#: state's row is illegal there: a local one raises LocalProtocolError, the
#: peer's fails the call (client) or is dropped unread (server, once the
#: request is complete or refused). DONE and FAILED have no way out.
_TRANSITIONS: dict[_State, dict[_Input, _State]] = {
    _S.UNSENT: {_I.SEND_REQUEST: _S.SENT},
    _S.SENT: {},
    _S.AWAITING_ANSWER: {
        _I.PEER_RESPONSE: _S.ANSWERED,
        _I.PEER_SUBSCRIBED: _S.RECEIVING_EVENTS,
        _I.PEER_BROKE: _S.FAILED,
    },
    _S.ANSWERED: {_I.PEER_END: _S.DONE, _I.PEER_BROKE: _S.FAILED},
    _S.RECEIVING_EVENTS: {
        _I.PEER_EVENT: _S.RECEIVING_EVENTS,
        _I.PEER_ERROR_EVENT: _S.EVENTS_ENDED,
        _I.PEER_END: _S.DONE,
        _I.PEER_BROKE: _S.FAILED,
    },
    _S.EVENTS_ENDED: {_I.PEER_END: _S.DONE, _I.PEER_BROKE: _S.FAILED},
    _S.RECEIVING_REQUEST: {
        _I.PEER_REQUEST: _S.HANDLING,
        _I.PEER_BAD_REQUEST: _S.REJECTED,
        _I.PEER_RESET: _S.FAILED,
        # A transport limit refuses the request before it is complete.
        _I.REJECT: _S.FAILED,
    },
    _S.REJECTED: {_I.REJECT: _S.FAILED, _I.RESPOND_ERROR: _S.FAILED},
    _S.HANDLING: {
        _I.RESPOND_RESULT: _S.DONE,
        _I.RESPOND_ERROR: _S.DONE,
        _I.ACCEPT_SUBSCRIBE: _S.PUSHING_EVENTS,
        _I.PEER_RESET: _S.FAILED,
    },
    _S.PUSHING_EVENTS: {
        _I.PUSH: _S.PUSHING_EVENTS,
        _I.PUSH_ERROR: _S.DONE,
        _I.CLOSE: _S.DONE,
        _I.PEER_RESET: _S.FAILED,
    },
    _S.DONE: {},
    _S.FAILED: {},
}

#: The public :class:`CallState` of each table state.
_PUBLIC: dict[_State, CallState] = {
    _S.UNSENT: CallState.WAITING,
    _S.SENT: CallState.WAITING,
    _S.AWAITING_ANSWER: CallState.WAITING,
    _S.ANSWERED: CallState.WAITING,
    _S.RECEIVING_EVENTS: CallState.STREAMING,
    # The stream's last event is in, its end is not: no longer streaming, not done.
    _S.EVENTS_ENDED: CallState.HANDLING,
    _S.RECEIVING_REQUEST: CallState.WAITING,
    _S.REJECTED: CallState.FAILED,
    _S.HANDLING: CallState.HANDLING,
    _S.PUSHING_EVENTS: CallState.STREAMING,
    _S.DONE: CallState.DONE,
    _S.FAILED: CallState.FAILED,
}

#: States after which nothing more is sent: the adapter ends the stream.
_FINISHED = frozenset(
    s for s, public in _PUBLIC.items() if public in (CallState.DONE, CallState.FAILED)
)


def _local_move(state: _State, move: _Input) -> _State:
    """The state after a local action; LocalProtocolError if the table has no such move."""
    following = _TRANSITIONS[state].get(move)
    if following is None:
        raise LocalProtocolError(f"cannot {move.value} in state {state.value}")
    return following


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
        self._limits = limits
        self._splitter = MessageSplitter(limits.max_message_bytes)
        self._expected = m.RESULT_OF[type(request.call)]
        self._sending = _S.UNSENT
        self._receiving = _S.AWAITING_ANSWER

    @property
    def state(self) -> CallState:
        """Where the call stands, from what the server sent."""
        return _PUBLIC[self._receiving]

    @property
    def buffered(self) -> int:
        """Bytes received that form no whole message yet (a message still arriving)."""
        return self._splitter.buffered

    def request_bytes(self) -> bytes:
        """The bytes to write, followed by end of stream. Call once."""
        self._sending = _local_move(self._sending, _I.SEND_REQUEST)
        return encode_request(self.request)

    def receive_data(self, data: bytes, end_stream: bool = False) -> list[ClientEvent]:
        """Feed bytes from the stream; ``end_stream`` when the server sent FIN."""
        if not _TRANSITIONS[self._receiving]:
            return []  # the call is over: whatever follows is dropped
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
        if not _TRANSITIONS[self._receiving]:
            return []
        return [self._fail(StreamResetError("the server reset the stream", error_code))]

    def _on_message(self, message: bytes) -> ClientEvent:
        row = _TRANSITIONS[self._receiving]
        if _I.PEER_EVENT in row:
            event = decode_event(message, self._limits)
            ends = isinstance(event, m.ErrorResponse)
            self._receiving = row[_I.PEER_ERROR_EVENT if ends else _I.PEER_EVENT]
            return EventReceived(event)
        if _I.PEER_RESPONSE not in row:
            raise MalformedMessageError("unexpected data after the response")
        response = decode_response(message, self._limits)
        if not isinstance(response, m.ErrorResponse | self._expected):
            raise MalformedMessageError(
                f"{type(response).__name__} does not answer {type(self.request.call).__name__}"
            )
        subscribed = isinstance(response, m.Subscribed)
        self._receiving = row[_I.PEER_SUBSCRIBED if subscribed else _I.PEER_RESPONSE]
        return ResponseReceived(response)

    def _on_end(self) -> ClientEvent:
        if self._splitter.buffered:
            return self._fail(TruncatedMessageError("the stream ended inside a message"))
        following = _TRANSITIONS[self._receiving].get(_I.PEER_END)
        if following is None:
            return self._fail(TruncatedMessageError("the stream ended without a response"))
        self._receiving = following
        return CallCompleted()

    def _fail(self, error: RemoteProtocolError) -> CallFailed:
        self._receiving = _TRANSITIONS[self._receiving][_I.PEER_BROKE]
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
        self._state = _S.RECEIVING_REQUEST
        self._limits = limits
        self._splitter = MessageSplitter(limits.max_message_bytes)
        self._message: bytes | None = None
        self._request: m.Request | None = None

    @property
    def state(self) -> CallState:
        """Where the call stands."""
        return _PUBLIC[self._state]

    @property
    def finished(self) -> bool:
        """True once the last bytes to send were produced: end the stream."""
        return self._state in _FINISHED

    def receive_data(self, data: bytes, end_stream: bool = False) -> list[ServerEvent]:
        """Feed bytes from the stream; ``end_stream`` when the client sent FIN."""
        if _I.PEER_REQUEST not in _TRANSITIONS[self._state]:
            return []  # the request is complete or refused: later bytes are dropped unread
        try:
            messages = self._splitter.feed(data)
        except MessageTooLargeError:
            return [self._refuse(PayloadTooLargeError("request exceeds the size limit"))]
        except MalformedMessageError:
            return [self._refuse(MalformedRequestError("request framing is invalid"))]
        if len(messages) > 1 or (messages and self._message is not None):
            return [self._refuse(MalformedRequestError("one request per stream"))]
        if messages:
            self._message = messages[0]
        if not end_stream:
            return []
        if self._message is None:
            return [self._refuse(MalformedRequestError("the stream ended inside the request"))]
        if self._splitter.buffered:
            return [self._refuse(MalformedRequestError("trailing bytes after the request"))]
        try:
            request = decode_request(self._message, self._limits)
        except ServiceError as error:
            return [self._refuse(error)]
        self._state = _TRANSITIONS[self._state][_I.PEER_REQUEST]
        self._request = request
        return [RequestReceived(request)]

    def receive_reset(self, error_code: int = 0) -> list[ServerEvent]:
        """The client reset the stream."""
        following = _TRANSITIONS[self._state].get(_I.PEER_RESET)
        if following is None:
            return []  # already answered or refused: nothing to abort
        self._state = following
        return [CallAborted(StreamResetError("the client reset the stream", error_code))]

    def reject(self, error: ServiceError) -> bytes:
        """Bytes of a coded error refusing the request; then end the stream.

        Answers a :class:`RequestRejected`, or refuses a request that is still
        arriving (a transport limit: too many bytes buffered, too slow).
        Nothing more may be sent afterwards.
        """
        self._state = _local_move(self._state, _I.REJECT)
        self._message = None
        return encode_response(m.ErrorResponse.from_exception(error))

    def respond(self, response: m.Response) -> bytes:
        """Bytes of the response. Afterwards :attr:`finished` says whether to end the stream.

        An ErrorResponse also answers a :class:`RequestRejected` (as :meth:`reject` does).
        """
        if isinstance(response, m.ErrorResponse):
            move = _I.RESPOND_ERROR
        elif isinstance(response, m.Subscribed):
            move = _I.ACCEPT_SUBSCRIBE
        else:
            move = _I.RESPOND_RESULT
        following = _local_move(self._state, move)
        if move is not _I.RESPOND_ERROR and self._request is not None:
            expected = m.RESULT_OF[type(self._request.call)]
            if not isinstance(response, expected):
                # The client would fail the call on it; refuse to send it at all.
                raise LocalProtocolError(
                    f"{type(response).__name__} does not answer {type(self._request.call).__name__}"
                )
        data = encode_response(response)
        self._state = following
        return data

    def push(self, event: m.Event) -> bytes:
        """Bytes of one event on a subscribe stream; an ErrorResponse ends it."""
        move = _I.PUSH_ERROR if isinstance(event, m.ErrorResponse) else _I.PUSH
        following = _local_move(self._state, move)
        data = encode_event(event)
        self._state = following
        return data

    def close(self) -> None:
        """End a subscribe stream without an error (the adapter sends FIN)."""
        self._state = _local_move(self._state, _I.CLOSE)

    def _refuse(self, error: ServiceError) -> RequestRejected:
        self._state = _TRANSITIONS[self._state][_I.PEER_BAD_REQUEST]
        return RequestRejected(error)
