"""Sans-I/O state machines for one call on one bidirectional QUIC stream.

Neither class does I/O: adapters feed them what arrived on the stream (data,
end of stream, reset) and get back events, and ask them for the bytes to send.
Every way a peer can misbehave (partial data, oversize, garbage, early end,
trailing bytes, reset) ends in one defined outcome. Which moves are legal in
which state is written once, in :data:`_TRANSITIONS` (as h11's ``_state.py``);
every byte either side sends comes out of a move in that table.

Client side::

    call = ClientCall(request)
    send(call.request_bytes(), end_stream=not call.acking)
    for event in call.receive_data(data, end_stream): ...
        # ResponseReceived, EventReceived, CallCompleted or CallFailed
    # SubscribeWithAcks keeps the client's side open for acknowledgements:
    send(call.ack_bytes(seq), end_stream=False)
    call.end_sending(); send(b"", end_stream=True)

Server side::

    call = ServerCall()
    for event in call.receive_data(data, end_stream): ...
        # RequestReceived -> handle, then send(call.respond(result), call.finished)
        # RequestRejected -> send(call.reject(event.error), end_stream=True)
        # CallAborted     -> the peer reset the stream; send nothing
        # AckReceived, AcksEnded, AcksFailed -> after a SubscribeWithAcks
        #     request: what the client wrote on its side of the stream
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
    "ACK_MESSAGE_BYTES",
    "AckReceived",
    "AcksEnded",
    "AcksFailed",
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
    ACKING = "acking"  # the request is sent, acknowledgements may follow
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
    OPEN_REQUEST = "send the request, keeping the stream open"
    SEND_ACK = "send an acknowledgement"
    END_SENDING = "end the stream"
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
    _S.UNSENT: {_I.SEND_REQUEST: _S.SENT, _I.OPEN_REQUEST: _S.ACKING},
    _S.SENT: {},
    _S.ACKING: {_I.SEND_ACK: _S.ACKING, _I.END_SENDING: _S.SENT},
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
    _S.ACKING: CallState.WAITING,
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


#: The largest acknowledgement a client may write on a SubscribeWithAcks
#: stream (a Request carrying an Ack, with no token, is about 48 bytes).
ACK_MESSAGE_BYTES = 256


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
        self.streaming = isinstance(request.call, m.Subscribe | m.SubscribeWithAcks)
        #: The client's side stays open after the request: acknowledgements follow.
        self.acking = isinstance(request.call, m.SubscribeWithAcks)
        self._highest_ack = 0
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
        """The bytes to write, followed by end of stream unless :attr:`acking`. Call once."""
        move = _I.OPEN_REQUEST if self.acking else _I.SEND_REQUEST
        self._sending = _local_move(self._sending, move)
        return encode_request(self.request)

    @property
    def sending(self) -> bool:
        """True while acknowledgements may still be written (the stream is open our way)."""
        return self._sending is _S.ACKING

    def ack_bytes(self, up_to_seq: int) -> bytes:
        """The bytes of an acknowledgement of every message up to ``up_to_seq``,
        written on a SubscribeWithAcks stream (not followed by end of stream)."""
        self._sending = _local_move(self._sending, _I.SEND_ACK)
        self._highest_ack = max(self._highest_ack, up_to_seq)
        return encode_request(m.Request(call=m.Ack(up_to_seq), token=""))

    def end_sending(self) -> None:
        """No more acknowledgements: the caller ends its side of the stream."""
        self._sending = _local_move(self._sending, _I.END_SENDING)

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
            if isinstance(event, m.Acked) and (
                not self.acking or event.up_to_seq > self._highest_ack
            ):
                raise MalformedMessageError("a confirmation of an acknowledgement never sent")
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


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An acknowledgement the client wrote on its SubscribeWithAcks stream."""

    up_to_seq: int


@dataclass(frozen=True, slots=True)
class AcksEnded:
    """The client ended its side of a SubscribeWithAcks stream: the subscription ends."""


@dataclass(frozen=True, slots=True)
class AcksFailed:
    """The client wrote something else than acknowledgements: end the stream with ``error``."""

    error: ServiceError


ServerEvent = RequestReceived | RequestRejected | CallAborted | AckReceived | AcksEnded | AcksFailed


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
        #: A request decoded before its stream ended (or why it cannot be).
        self._early: m.Request | ServiceError | None = None
        #: The client's side is open after a SubscribeWithAcks request.
        self._reading_acks = False

    @property
    def reading_acks(self) -> bool:
        """True while the client may still write acknowledgements (SubscribeWithAcks)."""
        return self._reading_acks

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
        if self._reading_acks:
            return self._receive_acks(data, end_stream)
        if _I.PEER_REQUEST not in _TRANSITIONS[self._state]:
            return []  # the request is complete or refused: later bytes are dropped unread
        try:
            messages = self._splitter.feed(data)
        except MessageTooLargeError:
            return [self._refuse(PayloadTooLargeError("request exceeds the size limit"))]
        except MalformedMessageError:
            return [self._refuse(MalformedRequestError("request framing is invalid"))]
        if messages and self._message is None:
            self._message = messages.pop(0)
            if not end_stream or messages:
                # Only SubscribeWithAcks is served before the client's FIN,
                # and followed by more messages (its acknowledgements); any
                # other request waits for the FIN, as §2 says.
                self._early = self._decode(self._message)
                if isinstance(self._early, m.Request) and isinstance(
                    self._early.call, m.SubscribeWithAcks
                ):
                    accepted = self._accept(self._early, acks=True)
                    return [accepted, *self._acks_in(messages, end_stream)]
        if messages:
            return [self._refuse(MalformedRequestError("one request per stream"))]
        if not end_stream:
            return []
        if self._message is None:
            return [self._refuse(MalformedRequestError("the stream ended inside the request"))]
        if self._splitter.buffered:
            return [self._refuse(MalformedRequestError("trailing bytes after the request"))]
        request = self._early or self._decode(self._message)
        if isinstance(request, ServiceError):
            return [self._refuse(request)]
        if isinstance(request.call, m.SubscribeWithAcks):
            # Its stream ended with the request: a subscription ended at once.
            return [self._accept(request, acks=False), AcksEnded()]
        return [self._accept(request, acks=False)]

    def _decode(self, message: bytes) -> m.Request | ServiceError:
        try:
            return decode_request(message, self._limits)
        except ServiceError as error:
            return error

    def _accept(self, request: m.Request, *, acks: bool) -> RequestReceived:
        self._state = _TRANSITIONS[self._state][_I.PEER_REQUEST]
        self._request = request
        self._early = None
        if acks:
            self._reading_acks = True
            self._splitter.lower_cap(ACK_MESSAGE_BYTES)
        return RequestReceived(request)

    def _receive_acks(self, data: bytes, end_stream: bool) -> list[ServerEvent]:
        try:
            messages = self._splitter.feed(data)
        except MessageTooLargeError:
            error = MalformedRequestError("an acknowledgement exceeds the size limit")
            return [self._acks_failed(error)]
        except MalformedMessageError:
            return [self._acks_failed(MalformedRequestError("acknowledgement framing is invalid"))]
        return self._acks_in(messages, end_stream)

    def _acks_in(self, messages: list[bytes], end_stream: bool) -> list[ServerEvent]:
        """The acknowledgements in ``messages`` (split with the request, or after it)."""
        events: list[ServerEvent] = []
        for message in messages:
            request = (
                self._decode(message)
                if len(message) <= ACK_MESSAGE_BYTES
                else MalformedRequestError("an acknowledgement exceeds the size limit")
            )
            if isinstance(request, ServiceError):
                return [*events, self._acks_failed(request)]
            if not isinstance(request.call, m.Ack):
                error = MalformedRequestError("only acknowledgements follow this request")
                return [*events, self._acks_failed(error)]
            events.append(AckReceived(request.call.up_to_seq))
        if end_stream:
            if self._splitter.buffered:
                error = MalformedRequestError("the stream ended inside an acknowledgement")
                return [*events, self._acks_failed(error)]
            self._reading_acks = False
            events.append(AcksEnded())
        return events

    def _acks_failed(self, error: ServiceError) -> AcksFailed:
        self._reading_acks = False
        return AcksFailed(error)

    def receive_reset(self, error_code: int = 0) -> list[ServerEvent]:
        """The client reset the stream."""
        self._reading_acks = False
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
        self._stop_acks_when_finished()
        return data

    def push(self, event: m.Event) -> bytes:
        """Bytes of one event on a subscribe stream; an ErrorResponse ends it."""
        move = _I.PUSH_ERROR if isinstance(event, m.ErrorResponse) else _I.PUSH
        following = _local_move(self._state, move)
        data = encode_event(event)
        self._state = following
        self._stop_acks_when_finished()
        return data

    def close(self) -> None:
        """End a subscribe stream without an error (the adapter sends FIN)."""
        self._state = _local_move(self._state, _I.CLOSE)
        self._stop_acks_when_finished()

    def _stop_acks_when_finished(self) -> None:
        # Nothing applies an acknowledgement once the stream is over: later
        # bytes are dropped unread, as after any answered request.
        if self.finished:
            self._reading_acks = False

    def _refuse(self, error: ServiceError) -> RequestRejected:
        self._state = _TRANSITIONS[self._state][_I.PEER_BAD_REQUEST]
        return RequestRejected(error)
