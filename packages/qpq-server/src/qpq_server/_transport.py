"""The server's listening adapter: qpq_proto's call server, the dispatcher behind it.

Every connection is a :class:`qpq_proto.quic.CallServerProtocol`, which the
server shares with a client's direct-delivery listener; its module says
what it bounds and why, because aioquic itself does not. Here those bounds
take the server's settings:

- QUIC credit: ``stream_window`` per stream, ``unauthenticated_buffer_bytes``
  per connection until it authenticated and ``receive_window`` after; all
  connections share one :class:`~qpq_proto.quic.ReceiveBudget` of
  ``receive_budget_bytes``;
- a connection that has not authenticated ``authenticate_timeout_seconds``
  after it opened is closed with a reason;
- ``max_connections`` in all and ``max_connections_per_address`` per source
  address (IPv6: per /64), closed with a reason once the handshake completes;
- request bytes buffered across a connection's unfinished requests
  (``connection_buffer_limit``, or ``unauthenticated_buffer_bytes`` before
  Authenticate): over it ``payload_too_large``, over the shared budget
  ``unavailable``, not complete ``request_timeout_seconds`` after its first
  byte ``malformed_request``; each with a STOP_SENDING;
- answer bytes the client has not read: ``answer_window`` per connection,
  ``answer_budget_bytes`` in all (an :class:`~qpq_proto.quic.AnswerBudget`),
  a call served once the most its answer can take
  (:func:`qpq_server._answers.answer_bound`) fits; an answer the client
  takes none of for ``answer_stall_seconds`` is reset.

The address a connection is counted and rate-limited under is the one its
handshake came from; it moves only to an address aioquic has validated
(RFC 9000 section 9.3), so datagrams with a spoofed source cannot move it.

What this adapter adds: a complete request goes to the dispatcher. A call
answered without waiting (a failed check, Health from a recent storage
check) is sent in the same event-loop turn, so the answer leaves with the
datagram aioquic sends after processing the request; a call that waits
runs in its own task (so a slow call never blocks another stream), which a
reset or STOP_SENDING from the client cancels; once its answer is sent, its
identity is billed for the answer's bytes (:meth:`Dispatcher.bill_answer`).
It bounds the bytes a subscribe stream holds unacknowledged (see
:mod:`._subscribe`; they count against the server's answer budget, not the
connection's window), re-checked whenever a datagram (with its ACKs and
credit) arrives, and counts connections, refusals, rejected streams and
stalled answers in the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any

from qpq_proto import ALPN, Endpoint, Limits, Request
from qpq_proto.errors import ServiceError
from qpq_proto.quic import (
    AnswerBudget,
    CallListener,
    CallServerProtocol,
    CloseCode,
    ReceiveBudget,
    ServedStream,
    ServeLimits,
    listen,
)
from qpq_server._aioquic import send_buffered_bytes
from qpq_server._answers import answer_bound
from qpq_server._config import ServerConfig
from qpq_server._context import ConnectionState
from qpq_server._dispatch import Answer, Dispatcher, PendingAnswer, Subscription
from qpq_server._logging import get_logger
from qpq_server._subscribe import SubscriptionRegistry, pump_events
from qpq_server._tls import TlsMaterial

__all__ = ["Listener", "TransportHub", "start_listener"]

_log = get_logger("transport")


def serve_limits(config: ServerConfig, limits: Limits) -> ServeLimits:
    """The bounds of one connection, from the server's settings."""
    return ServeLimits(
        limits=limits,
        unproven_bytes=config.unauthenticated_buffer_bytes,
        proven_window=config.receive_window,
        authenticate_timeout_seconds=config.authenticate_timeout_seconds,
        request_timeout_seconds=config.request_timeout_seconds,
        stream_window=config.stream_window,
        proven_request_bytes=config.connection_buffer_limit,
        answer_window=config.answer_window,
        answer_stall_seconds=config.answer_stall_seconds,
        event_stall_seconds=config.subscribe_stall_seconds,
    )


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
    #: What all connections together may hold of answers not yet read.
    answer_budget: AnswerBudget = field(init=False)
    #: The bounds of each connection.
    limits: ServeLimits = field(init=False)

    def __post_init__(self) -> None:
        app = self.dispatcher.app
        self.subscriptions = SubscriptionRegistry(app.config.max_subscriptions_per_identity)
        self.receive_budget = ReceiveBudget(app.config.receive_budget_bytes)
        self.answer_budget = AnswerBudget(app.config.answer_budget_bytes)
        self.limits = serve_limits(app.config, app.limits)

    def admit(self, key: str) -> str | None:
        """Count a new connection from address ``key``; the refusal reason if over a cap."""
        config = self.dispatcher.app.config
        if self.admitted >= config.max_connections:
            self.dispatcher.metrics.refused_connections.labels("total").inc()
            return self._refuse("too many connections to this server")
        if self.by_address.get(key, 0) >= config.max_connections_per_address:
            self.dispatcher.metrics.refused_connections.labels("address").inc()
            return self._refuse("too many connections from this address")
        self.admitted += 1
        self.by_address[key] = self.by_address.get(key, 0) + 1
        return None

    @staticmethod
    def _refuse(reason: str) -> str:
        _log.warning("connection refused", extra={"fields": {"reason": reason}})
        return reason

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


class QpqServerProtocol(CallServerProtocol):
    """One QUIC connection from one client."""

    shutdown_reason = "server shutting down"
    too_many_bytes_reason = "too many request bytes in flight on this connection"
    busy_reason = "the server holds too many request bytes; retry later"

    def __init__(self, *args: Any, hub: TransportHub, **kwargs: Any) -> None:
        # Set first: the base class calls the hooks below, which use them.
        self._state = ConnectionState(peer=None)
        self._shared = hub
        super().__init__(
            *args,
            hub=hub,
            budget=hub.receive_budget,
            limits=hub.limits,
            answers=hub.answer_budget,
            **kwargs,
        )
        self._config: ServerConfig = hub.dispatcher.app.config
        #: Subscribe streams waiting for the peer to take data, woken per datagram.
        self._room_waiters: dict[int, asyncio.Event] = {}
        hub.protocols.add(self)
        hub.dispatcher.metrics.connections.inc()

    @property
    def connection(self) -> ConnectionState:
        """Who this connection acts for (what its handlers see)."""
        return self._state

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        # ACKs and flow-control credit arrive in datagrams: let waiting
        # subscribe streams re-check their budget.
        for waiter in self._room_waiters.values():
            waiter.set()

    # ---- hooks of CallServerProtocol ------------------------------------

    def _peer_changed(self, peer: Endpoint | None) -> None:
        self._state.peer = peer

    def _identity_proven(self) -> bool:
        # Proven is more than a signature: an identity costs nothing to make,
        # so the larger windows wait for an active account (registered, or
        # found when it authenticated).
        return self._state.admitted

    def _rejected(self, error: ServiceError) -> None:
        self._shared.dispatcher.metrics.bad_streams.labels(error.code.name.lower()).inc()

    def _authenticate_expired(self) -> None:
        self._shared.dispatcher.metrics.refused_connections.labels("unauthenticated").inc()

    def _connection_ended(self) -> None:
        self._shared.protocols.discard(self)
        self._shared.dispatcher.metrics.connections.dec()

    def _answer_bound(self, request: Request) -> int:
        return answer_bound(request.call, self._config.limits)

    def _answers_stalled(self, stream_ids: list[int]) -> None:
        self._shared.dispatcher.metrics.answer_stalls.inc(len(stream_ids))
        _log.info(
            "client took none of an answer in time; stream reset",
            extra={"fields": {"streams": len(stream_ids)}},
        )

    async def _reserve_answer(self, stream_id: int, stream: ServedStream, size: int) -> None:
        """Hold room for ``size`` bytes of ``stream_id``'s answer (a handler's
        ``CallContext.reserve_answer``); nothing once the stream is gone."""
        if await self._wait_for_answer_room(stream_id, stream, size):
            self._answers.reserve(stream_id, size)

    def _request_received(self, stream_id: int, stream: ServedStream, request: Request) -> None:
        self._release_request(stream)
        answer = self._shared.dispatcher.start(
            request, self._state, functools.partial(self._reserve_answer, stream_id, stream)
        )
        if isinstance(answer, PendingAnswer | Subscription):
            task = asyncio.create_task(self._serve(stream_id, stream, answer))
            if isinstance(answer, PendingAnswer):
                # Cancelled before it ran, the task leaves the handler unstarted.
                task.add_done_callback(lambda _task: answer.close())
            stream.task = task
            self._shared.tasks.add(task)
            task.add_done_callback(self._shared.tasks.discard)
            return
        try:
            self._respond(stream_id, stream, answer)
        except Exception:  # noqa: BLE001 - one stream's failure must not reach others
            _log.exception("stream handling failed", extra={"fields": {"stream": stream_id}})

    # ---- answering ------------------------------------------------------

    def _abort(self, stream_id: int, code: int) -> None:
        """Reset our side of ``stream_id`` and free what QUIC still buffered for it."""
        self._reset_answer(stream_id, code)

    async def _wait_for_room(self, stream_id: int, size: int) -> bool:
        """Wait until ``stream_id`` holds few enough unacknowledged bytes for ``size`` more,
        and the server's answer budget has room for them.

        Woken by every datagram from the peer (that is when ACKs and credit
        arrive). False when the buffer made no progress for
        ``subscribe_stall_seconds``, or the stream or connection is gone.
        """
        stream = self._streams.get(stream_id)
        if stream is None or not await self._wait_for_stream_room(stream_id, size):
            return False
        return await self._wait_for_answer_room(stream_id, stream, size)

    async def _wait_for_stream_room(self, stream_id: int, size: int) -> bool:
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

    async def _serve(
        self, stream_id: int, stream: ServedStream, pending: PendingAnswer | Subscription
    ) -> None:
        try:
            answer: Answer = await pending.wait() if isinstance(pending, PendingAnswer) else pending
            if stream.call is None:
                return
            if isinstance(answer, Subscription):
                await self._stream_events(stream_id, stream, answer)
            else:
                sent = self._respond(stream_id, stream, answer)
                await self._shared.dispatcher.bill_answer(self._state, sent)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - one stream's failure must not reach others
            _log.exception("stream handling failed", extra={"fields": {"stream": stream_id}})
        finally:
            self._forget_when_idle(stream_id, stream)

    async def _stream_events(self, stream_id: int, stream: ServedStream, sub: Subscription) -> None:
        if stream.call is None:
            return
        # Its events are bounded per stream (subscribe_buffer_bytes), and the
        # answer budget of the server; calls on the connection are not held
        # up by a subscription the client reads at its own pace.
        self._exclude_from_answer_window(stream_id)
        task = asyncio.current_task()
        slot = self._shared.subscriptions.add(sub.recipient, task)
        try:
            # Closed on the way out, cancelled or not: its notifier watch ends with it.
            async with contextlib.aclosing(sub.events(stream.acks)) as events:
                delivered = await pump_events(
                    stream.call, events, _StreamSink(self, stream_id), slot
                )
        finally:
            self._shared.subscriptions.remove(slot)
        if not delivered:
            self._shared.dispatcher.metrics.subscribe_stalls.inc()
            _log.info("subscriber stalled; stream reset", extra={"fields": {"stream": stream_id}})


@dataclass(slots=True)
class Listener:
    """A bound UDP socket serving qpq."""

    bound: CallListener
    host: str

    @property
    def port(self) -> int:
        return self.bound.port

    def close(self) -> None:
        self.bound.close()


async def start_listener(
    host: str, port: int, tls: TlsMaterial, hub: TransportHub, idle_timeout: float
) -> Listener:
    """Bind ``host:port`` (0 = any free port) and serve qpq on it."""

    def create_protocol(*args: Any, **kwargs: Any) -> QpqServerProtocol:
        return QpqServerProtocol(*args, hub=hub, **kwargs)

    bound = await listen(
        host,
        port,
        alpn=ALPN,
        idle_timeout=idle_timeout,
        certificate=tls.certificate,
        private_key=tls.private_key,
        chain=tls.chain,
        create_protocol=create_protocol,
    )
    return Listener(bound, host)


def close_all(hub: TransportHub, reason: str) -> None:
    """Close every live connection with ``reason``."""
    for protocol in list(hub.protocols):
        protocol.close_with_reason(CloseCode.SHUTDOWN, reason)
