"""qpq over QUIC, the listening side: one adapter for every endpoint that answers calls.

The qpq server and a client's direct-delivery listener both answer calls
from peers they do not trust yet; :class:`CallServerProtocol` is what they
share, so that a bound fixed here holds for both. It makes no protocol
decisions: each client-initiated bidirectional stream gets a
:class:`qpq_proto.ServerCall`; a complete request goes to the subclass
(:meth:`CallServerProtocol._request_received`), which answers through
:meth:`~CallServerProtocol._respond`. A rejected stream gets its coded error
and a STOP_SENDING; a reset or STOP_SENDING from the peer cancels that
stream's task.

What it bounds, because aioquic itself does not (it grows every flow-control
window as data arrives and buffers all that is written to a stream;
docs/aioquic-flow-control.md):

- what QUIC buffers below the adapter: every connection is a
  :class:`~qpq_proto.quic.BoundedQuicConnection`, whose credit grows only as
  this adapter takes data out, by ``stream_window`` per stream and, per
  connection, ``unproven_bytes`` until the peer proved an identity and
  ``proven_window`` after; all connections share one
  :class:`~qpq_proto.quic.ReceiveBudget`;
- time to prove an identity: a connection that has not
  ``authenticate_timeout_seconds`` after it opened is closed with a reason;
- connections: the :class:`AdmissionHub` counts each under its source
  address (IPv6: its /64, which one host normally owns whole); one over a
  cap is closed with a reason once its handshake completes (before that,
  QUIC would drop the reason);
- request bytes buffered across a connection's unfinished requests
  (``unproven_bytes`` before the proof, ``proven_request_bytes`` after):
  the stream that would exceed it is answered ``payload_too_large``; one
  that would exceed the shared receive budget, ``unavailable``; a
  request not complete ``request_timeout_seconds`` after its first byte is
  answered ``malformed_request`` (else a peer could hold its share of the
  budget with one byte until the idle timeout); all get a STOP_SENDING.

- answer bytes (:mod:`qpq_proto.quic._answers`): what QUIC still holds of
  a connection's answers until the peer acknowledges them, plus what is
  reserved for answers not yet written, is at most ``answer_window`` for
  the connection and the shared :class:`~qpq_proto.quic.AnswerBudget` for
  all. A complete request is served only once its answer's reservation
  (:meth:`CallServerProtocol._answer_bound`) fits: a peer that asks and
  never reads waits for itself, before its answers are produced. A stream
  whose answer the peer takes none of for ``answer_stall_seconds`` is reset
  with :data:`STREAM_STALLED` and what QUIC held for it is freed (after
  ``pressed_stall_seconds`` instead while another connection waits for
  room); room that frees goes first to connections whose peers let no
  answer stall.

The address a connection is counted under is the one its handshake came
from; it moves only to an address aioquic has validated (RFC 9000 section
9.3), so datagrams with a spoofed source cannot move it.

Answers that complete in the same event-loop turn leave together: one
transmit per turn outside aioquic's own datagram handling (which transmits
when it is done), instead of a datagram and a sendto per answer.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from qpq_proto._calls import (
    AckReceived,
    AcksEnded,
    AcksFailed,
    CallState,
    RequestReceived,
    RequestRejected,
    ServerCall,
)
from qpq_proto._messages import Endpoint, Request, Response, SubscribeWithAcks
from qpq_proto.errors import (
    MalformedRequestError,
    PayloadTooLargeError,
    ServiceError,
    UnavailableError,
)
from qpq_proto.quic._aioquic import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicConnectionProtocol,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
    bytes_in_flight,
)
from qpq_proto.quic._answers import SMALL_ANSWER_BYTES, AnswerBook, AnswerBudget
from qpq_proto.quic._bounded import BoundedQuicConnection, ReceiveBudget
from qpq_proto.quic._serve_limits import (
    STREAM_REJECTED,
    STREAM_STALLED,
    AdmissionHub,
    CloseCode,
    ServeLimits,
    address_key,
    endpoint_of,
)

__all__ = ["CallServerProtocol", "ServedStream", "StreamAcks"]


@dataclass(eq=False, slots=True)
class StreamAcks:
    """What a client wrote on its side of a SubscribeWithAcks stream, for the
    server to apply: only the highest acknowledgement is kept (each covers
    every one before it), so a client that writes many costs one number."""

    highest: int = 0
    #: The client ended its side: the subscription ends.
    ended: bool = False
    #: It wrote something else: the stream ends with this coded error.
    error: ServiceError | None = None
    #: Called whenever one of the above changed (the subscription's wake-up).
    wake: Callable[[], None] | None = None

    def changed(self) -> None:
        if self.wake is not None:
            self.wake()


@dataclass(slots=True)
class ServedStream:
    """One stream a peer opened: its state machine, its task and what it holds."""

    #: None once the request was rejected: its buffered bytes are dropped with it.
    call: ServerCall | None
    task: asyncio.Task[None] | None = None
    peer_done: bool = False
    stopped: bool = False
    #: Request bytes held for this stream's unfinished request.
    buffered: int = 0
    deadline: asyncio.TimerHandle | None = None
    #: The client's acknowledgements (a SubscribeWithAcks stream only).
    acks: StreamAcks | None = None

    def done(self) -> bool:
        """Both directions are over and no task still uses the stream."""
        answered = self.call is None or self.call.finished or self.stopped
        idle = self.task is None or self.task.done()
        return answered and self.peer_done and idle

    def receiving(self) -> bool:
        """The request is still arriving."""
        return self.call is not None and self.call.state is CallState.WAITING


class CallServerProtocol(QuicConnectionProtocol, ABC):
    """One QUIC connection from one peer, answering its calls within bounds.

    A subclass says what to do with a complete request
    (:meth:`_request_received`) and when the peer has proven an identity
    (:meth:`_identity_proven`); the other hooks default to nothing. Build
    it in aioquic's ``QuicServer`` protocol factory, before the first
    datagram (the peer learns the windows in the handshake). ``answers`` is
    the budget of answer bytes the endpoint's connections share; without
    one, each connection is bounded by its own window only.
    """

    #: Reason phrases; a subclass words them for its role.
    shutdown_reason: ClassVar[str] = "shutting down"
    too_many_bytes_reason: ClassVar[str] = "too many request bytes in flight on this connection"
    busy_reason: ClassVar[str] = "too many request bytes held; retry later"

    def __init__(
        self,
        *args: Any,
        hub: AdmissionHub,
        budget: ReceiveBudget,
        limits: ServeLimits,
        answers: AnswerBudget | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._hub = hub
        self._budget = budget
        self._serve_limits = limits
        self._bounded = BoundedQuicConnection.adopt(
            self._quic,
            stream_window=limits.stream_credit,
            connection_window=limits.unproven_bytes,
            budget=budget,
        )
        self._bounded.wake = self.transmit
        self._answer_budget = answers
        self._answers = AnswerBook(limits.answer_window_bytes, answers)
        #: Calls waiting for room for their answers, woken when answer bytes go.
        self._answer_waiters: list[asyncio.Future[None]] = []
        self._answer_waiting = 0
        self._stall_timer: asyncio.TimerHandle | None = None
        #: Request bytes this connection may buffer: small until the peer proved an identity.
        self._request_budget = min(limits.proven_request_budget, limits.unproven_bytes)
        self._streams: dict[int, ServedStream] = {}
        self._open = True
        self._flush_pending = False
        #: Inside aioquic's datagram_received, which transmits once it is done.
        self._receiving = False
        #: Request bytes buffered across this connection's unfinished requests.
        self._request_bytes = 0
        #: The peer's observed address: the handshake's, then only validated ones.
        self._peer: Endpoint | None = None
        #: The address key this connection is counted under (None: not yet, or refused).
        self._address_key: str | None = None
        self._refusal: str | None = None
        self._admission_done = False
        self._proven = False
        self._auth_deadline: asyncio.TimerHandle | None = self._loop.call_later(
            limits.authenticate_timeout_seconds, self._authenticate_timed_out
        )
        if not hub.accepting:
            self.close_with_reason(CloseCode.SHUTDOWN, self.shutdown_reason)

    # ---- hooks ----------------------------------------------------------

    @abstractmethod
    def _request_received(self, stream_id: int, stream: ServedStream, request: Request) -> None:
        """Serve a complete request.

        Its bytes are still counted (``stream.buffered``): release them with
        :meth:`_release_request` once they left the receive buffer, or hold
        them longer with :meth:`_take_request_bytes` and :meth:`_release_bytes`.
        Answer with :meth:`_respond`, now or from ``stream.task``.
        """

    @abstractmethod
    def _identity_proven(self) -> bool:
        """Whether the peer has proven an identity on this connection."""

    def _peer_changed(self, peer: Endpoint | None) -> None:
        """The peer's observed address is now ``peer``."""

    def _rejected(self, error: ServiceError) -> None:
        """A stream's request was rejected with ``error``."""

    def _authenticate_expired(self) -> None:
        """The connection is being closed for proving no identity in time."""

    def _connection_ended(self) -> None:
        """The connection ended; everything it counted is released."""

    def _answer_bound(self, request: Request) -> int:
        """The most bytes ``request``'s answer may take, reserved before it is served.

        By default one whole message; a subclass that knows its calls
        reserves less for small answers, so that more are served at once.
        """
        return self._serve_limits.limits.max_message_bytes

    def _answers_stalled(self, stream_ids: list[int]) -> None:
        """The answers on ``stream_ids`` were reset: the peer took none of them in time."""

    # ---- connection -----------------------------------------------------

    @property
    def peer(self) -> Endpoint | None:
        """The peer's address: the handshake's, or a validated one it moved to."""
        return self._peer

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if not self._admission_done:
            # The address the handshake comes from; later ones only once validated.
            self._set_peer(endpoint_of(addr))
            self._admit(addr)
        in_flight = bytes_in_flight(self._quic)
        self._receiving = True
        try:
            super().datagram_received(data, addr)
        finally:
            self._receiving = False
        # Acknowledgements arrive in datagrams: what the senders hold shrinks
        # (only then: an acknowledgement of anything lowers what is in flight).
        after = bytes_in_flight(self._quic)
        if in_flight is None or after is None or after < in_flight:
            self._measure_answers()

    def close_with_reason(self, code: int, reason: str) -> None:
        """Close the connection, telling the peer why."""
        if self._open:
            self._quic.close(error_code=code, reason_phrase=reason)
            self.transmit()

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_terminated()
        super().connection_lost(exc)

    def _set_peer(self, peer: Endpoint | None) -> None:
        self._peer = peer
        self._peer_changed(peer)

    def _admit(self, addr: Any) -> None:
        self._admission_done = True
        key = address_key(self._peer.host) if self._peer else str(addr)
        self._refusal = self._hub.admit(key)
        if self._refusal is None:
            self._address_key = key

    def _follow_validated_path(self) -> None:
        """Move the observed address (and its count) to a validated new peer address."""
        validated = self._bounded.validated_peer()
        peer = self._peer
        if validated is None or (peer is not None and (peer.host, peer.port) == validated):
            return
        endpoint = endpoint_of(validated)
        if endpoint is None:
            return
        self._set_peer(endpoint)
        key = address_key(endpoint.host)
        if self._address_key is not None and key != self._address_key:
            self._hub.move(self._address_key, key)
            self._address_key = key

    def _authenticate_timed_out(self) -> None:
        self._auth_deadline = None
        if self._proven or not self._open:
            return
        self._authenticate_expired()
        seconds = self._serve_limits.authenticate_timeout_seconds
        self.close_with_reason(
            CloseCode.UNAUTHENTICATED, f"no identity proven within {seconds:g} s"
        )

    def _on_proven(self) -> None:
        """The peer proved an identity: lift the connection's small budgets."""
        self._proven = True
        if self._auth_deadline is not None:
            self._auth_deadline.cancel()
            self._auth_deadline = None
        self._request_budget = self._serve_limits.proven_request_budget
        # Granted with the next packet: the answer that carries the proof's outcome.
        self._bounded.set_connection_window(self._serve_limits.proven_window)

    def _on_terminated(self) -> None:
        if not self._open:
            return
        self._open = False
        if self._auth_deadline is not None:
            self._auth_deadline.cancel()
            self._auth_deadline = None
        self._budget.forget(self._bounded)
        # What the closed connection's senders held is freed now, not when
        # the connection object goes: the budget counts it free at once.
        self._bounded.drop_send_buffers()
        self._answers.close()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._answer_budget is not None:
            self._answer_budget.unwatch_pressure(self._rearm_stall_timer)
        self._wake_answer_waiters()
        for stream in self._streams.values():
            self._release_request(stream)
            if stream.task is not None and not stream.task.done():
                stream.task.cancel()
        self._streams.clear()
        if self._address_key is not None:
            self._hub.release(self._address_key)
            self._address_key = None
        self._connection_ended()

    # ---- events ---------------------------------------------------------

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._on_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, StreamReset | StopSendingReceived):
            self._on_reset(event.stream_id, event.error_code, isinstance(event, StreamReset))
        elif isinstance(event, HandshakeCompleted):
            # The listener's configuration names the ALPN it serves (see _listen.listen).
            served = self._quic.configuration.alpn_protocols or []
            if self._refusal is not None:
                self.close_with_reason(CloseCode.TOO_MANY, self._refusal)
            elif event.alpn_protocol not in served:
                self.close_with_reason(CloseCode.BAD_ALPN, f"ALPN must be {' or '.join(served)}")
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
            stream = self._streams[stream_id] = ServedStream(ServerCall(self._serve_limits.limits))
        if end_stream:
            stream.peer_done = True
        if stream.acks is not None and stream.call is not None and stream.call.reading_acks:
            self._on_acks(stream, data, end_stream)
            self._forget_if_done(stream_id, stream)
            return
        if not stream.receiving() or stream.call is None:
            # Answered or rejected already: late bytes are dropped unread.
            self._forget_if_done(stream_id, stream)
            return
        if self._request_bytes + len(data) > self._request_budget:
            self._reject(stream_id, stream, PayloadTooLargeError(self.too_many_bytes_reason))
            self._forget_if_done(stream_id, stream)
            return
        if not self._budget.reserve(len(data)):
            self._reject(stream_id, stream, UnavailableError(self.busy_reason))
            self._forget_if_done(stream_id, stream)
            return
        stream.buffered += len(data)
        self._request_bytes += len(data)
        for call_event in stream.call.receive_data(data, end_stream):
            if isinstance(call_event, RequestReceived):
                self._cancel_deadline(stream)
                self._follow_validated_path()
                if isinstance(call_event.request.call, SubscribeWithAcks):
                    stream.acks = StreamAcks()
                self._serve_within_answer_window(stream_id, stream, call_event.request)
            elif isinstance(call_event, RequestRejected):
                self._reject(stream_id, stream, call_event.error)
            elif stream.acks is not None:
                self._note_ack(stream.acks, call_event)
        if stream.deadline is None and stream.receiving():
            # Armed once the request spans more than one chunk: most arrive whole.
            stream.deadline = self._loop.call_later(
                self._serve_limits.request_timeout_seconds,
                self._request_timed_out,
                stream_id,
                stream,
            )
        self._forget_if_done(stream_id, stream)

    def _on_acks(self, stream: ServedStream, data: bytes, end_stream: bool) -> None:
        """Bytes on a SubscribeWithAcks stream after its request: acknowledgements.

        They are not counted against the request budgets: each is taken as
        it completes, and a partial one is at most ACK_MESSAGE_BYTES.
        """
        if stream.call is None or stream.acks is None:
            return
        for call_event in stream.call.receive_data(data, end_stream):
            self._note_ack(stream.acks, call_event)

    @staticmethod
    def _note_ack(acks: StreamAcks, call_event: object) -> None:
        if isinstance(call_event, AckReceived):
            if call_event.up_to_seq <= acks.highest:
                return
            acks.highest = call_event.up_to_seq
        elif isinstance(call_event, AcksEnded):
            acks.ended = True
        elif isinstance(call_event, AcksFailed):
            acks.error = call_event.error
        else:
            return
        acks.changed()

    def _request_timed_out(self, stream_id: int, stream: ServedStream) -> None:
        stream.deadline = None
        if self._streams.get(stream_id) is not stream or not stream.receiving():
            return
        seconds = self._serve_limits.request_timeout_seconds
        self._reject(
            stream_id,
            stream,
            MalformedRequestError(f"the request did not arrive in full within {seconds:g} s"),
        )
        self._forget_if_done(stream_id, stream)

    def _on_reset(self, stream_id: int, error_code: int, is_reset: bool) -> None:
        if not is_reset:
            # STOP_SENDING: aioquic reset our side, answered or not; what it
            # buffered is never sent, so it need not wait to be freed.
            self._bounded.abandon_sending(stream_id, error_code)
            self._answers.forget(stream_id)
            self._wake_answer_waiters()
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if is_reset:
            # RESET_STREAM: the peer abandoned its side; nothing more arrives.
            if stream.call is not None:
                stream.call.receive_reset(error_code)
            self._release_request(stream)
            stream.peer_done = True
        # Either way nothing more can or need be sent.
        stream.stopped = True
        self._answers.stream_ended(stream_id)
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        self._forget_if_done(stream_id, stream)

    # ---- request bytes --------------------------------------------------

    def _cancel_deadline(self, stream: ServedStream) -> None:
        if stream.deadline is not None:
            stream.deadline.cancel()
            stream.deadline = None

    def _take_request_bytes(self, stream: ServedStream) -> int:
        """Move ``stream``'s request bytes off the stream, still counted; their number."""
        held, stream.buffered = stream.buffered, 0
        return held

    def _release_bytes(self, size: int) -> None:
        """Stop counting ``size`` request bytes (from :meth:`_take_request_bytes`)."""
        self._request_bytes -= size
        self._budget.release(size)

    def _release_request(self, stream: ServedStream) -> None:
        """The request left the receive buffer: stop counting it and its deadline."""
        self._release_bytes(self._take_request_bytes(stream))
        self._cancel_deadline(stream)

    def _reject(self, stream_id: int, stream: ServedStream, error: ServiceError) -> None:
        """Answer a request we will not serve with its coded error and stop its upload."""
        self._release_request(stream)
        self._rejected(error)
        call, stream.call = stream.call, None
        if call is None:
            return
        self._send(stream_id, call.reject(error), end_stream=True)
        if not stream.peer_done:
            # Stop the peer's upload of a request we will never read. The
            # stream is remembered until the peer's FIN or RESET_STREAM, so
            # bytes still in flight are dropped instead of starting a new request.
            try:
                self._quic.stop_stream(stream_id, STREAM_REJECTED)
            except ValueError:
                stream.peer_done = True
            self.transmit()

    # ---- answer bytes ---------------------------------------------------

    def _serve_within_answer_window(
        self, stream_id: int, stream: ServedStream, request: Request
    ) -> None:
        """Serve ``request`` once its answer's reservation fits: now if it does."""
        size = self._answer_bound(request)
        if self._answers.fits(stream_id, size):
            self._answers.reserve(stream_id, size)
            self._request_received(stream_id, stream, request)
            return
        stream.task = self._loop.create_task(self._serve_later(stream_id, stream, request, size))

    async def _serve_later(
        self, stream_id: int, stream: ServedStream, request: Request, size: int
    ) -> None:
        waiting = asyncio.current_task()
        try:
            if await self._wait_for_answer_room(stream_id, stream, size):
                self._answers.reserve(stream_id, size)
                stream.task = None
                self._request_received(stream_id, stream, request)
        except asyncio.CancelledError:
            pass
        finally:
            if stream.task is waiting:
                # Never served (the stream or the connection went away).
                self._release_request(stream)
                self._forget_when_idle(stream_id, stream)
            elif stream.task is None:
                self._forget_if_done(stream_id, stream)

    async def _wait_for_answer_room(self, stream_id: int, stream: ServedStream, size: int) -> bool:
        """Wait until ``stream_id`` may reserve (or, an event stream, write) ``size`` bytes.

        Woken whenever answer bytes are released, on this connection (an
        acknowledgement, a stalled stream reset) or, through the shared
        budget, on another. False once the stream or the connection is gone.
        """
        self._answer_waiting += 1
        try:
            while self._open and not stream.stopped:
                if self._answers.fits(stream_id, size):
                    return True
                if size > SMALL_ANSWER_BYTES and self._answers.window_fits(stream_id, size):
                    # Only the shared budget is short: take a place in its line.
                    self._answers.wait_in_line()
                if not self._answer_waiters and self._answer_budget is not None:
                    self._answer_budget.watch(self._wake_answer_waiters)
                waiter: asyncio.Future[None] = self._loop.create_future()
                self._answer_waiters.append(waiter)
                await waiter
            return False
        finally:
            self._answer_waiting -= 1
            if not self._answer_waiting:
                self._answers.leave_line()

    def _wake_answer_waiters(self) -> None:
        if self._answer_budget is not None:
            self._answer_budget.unwatch(self._wake_answer_waiters)
        waiters, self._answer_waiters = self._answer_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _exclude_from_answer_window(self, stream_id: int) -> None:
        """Count ``stream_id`` (a stream of events, bounded by its owner) against the
        shared answer budget only, not the connection's window."""
        self._answers.exclude_from_window(stream_id)

    def _measure_answer(self, stream_id: int, written: int = 0) -> bool:
        """Read what QUIC holds for ``stream_id`` (``written`` more bytes were just
        queued); True if it holds fewer than before."""
        held = self._bounded.unacknowledged(stream_id, self._answers.held_by(stream_id) + written)
        return self._answers.measure(stream_id, held, self._loop.time())

    def _measure_answers(self) -> None:
        if not self._open:
            return
        released = False
        for stream_id in self._answers.holding():
            released = self._measure_answer(stream_id) or released
        if released:
            self._wake_answer_waiters()

    def _stall_times(self) -> tuple[float, float]:
        """How long the peer may take none of a call's answer, and of a stream of events."""
        limits = self._serve_limits
        calls = limits.answer_stall_seconds
        if self._answer_budget is not None and self._answer_budget.pressed:
            # Others wait for room: answers nobody reads give it back sooner.
            calls = min(calls, limits.pressed_stall_seconds)
        return calls, limits.event_stall

    def _arm_stall_timer(self) -> None:
        if self._stall_timer is not None or not self._open:
            return
        when = self._answers.next_stall(*self._stall_times())
        if self._answer_budget is not None:
            if when is None:
                self._answer_budget.unwatch_pressure(self._rearm_stall_timer)
            else:
                self._answer_budget.watch_pressure(self._rearm_stall_timer)
        if when is not None:
            self._stall_timer = self._loop.call_at(when, self._reset_stalled_answers)

    def _rearm_stall_timer(self) -> None:
        """The shared budget became pressed: the stall times may be shorter now."""
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._arm_stall_timer()

    def _reset_stalled_answers(self) -> None:
        self._stall_timer = None
        if not self._open:
            return
        self._measure_answers()
        stalled = self._answers.stalled(self._loop.time(), *self._stall_times())
        for stream_id in stalled:
            self._reset_answer(stream_id, STREAM_STALLED)
        # Its next calls wait behind those of peers that read their answers.
        self._answers.stalls += len(stalled)
        if stalled:
            self._answers_stalled(stalled)
        self._arm_stall_timer()

    def _reset_answer(self, stream_id: int, code: int) -> None:
        """Reset our side of ``stream_id`` and free what QUIC buffered for it at once.

        The stream's task is cancelled, unless it is the one resetting it.
        """
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.stopped = True
            task = stream.task
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
        if not self._open:
            return
        self._bounded.abandon_sending(stream_id, code)
        self._answers.forget(stream_id)
        self._wake_answer_waiters()
        self.transmit()

    # ---- answering ------------------------------------------------------

    def _respond(self, stream_id: int, stream: ServedStream, answer: Response) -> int:
        """Send ``answer`` on ``stream_id`` (lifting the budgets once the peer is proven).

        Returns:
            The bytes queued (0 when the stream can take nothing more).
        """
        if not self._proven and self._identity_proven():
            self._on_proven()
        call = stream.call
        if call is None or stream.stopped:
            return 0
        data = call.respond(answer)
        return len(data) if self._send(stream_id, data, end_stream=call.finished) else 0

    def _send(self, stream_id: int, data: bytes, end_stream: bool) -> bool:
        """Queue ``data`` on ``stream_id``; False if the stream or connection is gone.

        What was reserved for the stream's answer gives way to what QUIC now holds.
        """
        if not self._open:
            return False
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=end_stream)
        except (RuntimeError, ValueError, AssertionError):
            return False  # the stream was reset or stopped meanwhile
        self._answers.reserve(stream_id, 0)
        self._measure_answer(stream_id, len(data))
        self._arm_stall_timer()
        # One flush per loop turn: answers that complete together share datagrams
        # instead of paying a datagram (and a sendto) each. While a datagram is
        # being processed, aioquic transmits when it is done.
        if not self._flush_pending and not self._receiving:
            self._flush_pending = True
            self._loop.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_pending = False
        if self._open:
            self.transmit()

    def _forget_if_done(self, stream_id: int, stream: ServedStream) -> None:
        if stream.done():
            self._streams.pop(stream_id, None)
            self._answers.stream_ended(stream_id)

    def _forget_when_idle(self, stream_id: int, stream: ServedStream) -> None:
        """Call when ``stream``'s task ends: drop the stream if nothing else uses it."""
        stream.task = None
        if self._streams.get(stream_id) is stream and stream.done():
            self._streams.pop(stream_id, None)
            self._answers.stream_ended(stream_id)
