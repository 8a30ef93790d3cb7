"""The listening side: qpq_proto's call server, the gate and the host behind it.

Every incoming connection is a :class:`qpq_proto.quic.CallServerProtocol`,
the adapter the qpq server uses too; its module says what it bounds and
why. Anyone who finds the port can connect, so what a connection can make
the listener hold is bounded before it proved a member's identity, as the
server bounds it (docs/aioquic-flow-control.md), with this package's
settings (:class:`~qpq_p2p.PeerConfig`):

- QUIC receive buffers: credit only as data is taken, one whole message
  per stream, ``unauthenticated_buffer_bytes`` per connection until its
  proof, ``receive_window_bytes`` after; all connections share one
  :class:`~qpq_proto.quic.ReceiveBudget` of ``receive_budget_bytes``;
- request bytes buffered across a connection's unfinished requests: the
  same small cap before the proof, ``receive_window_bytes`` after; the
  stream that would exceed it is answered ``payload_too_large``, one that
  would exceed the shared budget ``unavailable``, and a request not
  complete ``request_timeout_seconds`` after its first byte
  ``malformed_request``;
- time: a connection that has not proven an identity
  ``authenticate_timeout_seconds`` after it opened is closed;
- connections: ``max_connections`` in all, ``max_connections_per_address``
  from one address (IPv6: one /64), counted under the handshake's address
  and moved only to an address aioquic validated (RFC 9000 section 9.3);
  one over the per-address cap is closed once its handshake completes,
  while a newcomer that finds every slot taken closes the oldest
  connection that has not proven an identity (a few addresses must not
  be able to keep members out).

What this adapter adds: a complete request goes to the connection's
:class:`~qpq_p2p._proof.ListenerGate`, and what the gate returns is sent
back; a message the gate admits goes to the host's receiver first and is
answered ``Done`` only once the receiver returned (the host persisted it).
Its bytes stay counted until then.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from qpq_p2p._config import PeerConfig
from qpq_p2p._delivery import DirectMessage
from qpq_p2p._hub import ListenerHub
from qpq_proto import PEER_ALPN, ErrorResponse, Request, Response
from qpq_proto.errors import ServiceError
from qpq_proto.quic import (
    CallListener,
    CallServerProtocol,
    CloseCode,
    ServedStream,
    ServeLimits,
    listen,
)

__all__ = ["PeerListener", "start_listener"]


def serve_limits(config: PeerConfig) -> ServeLimits:
    """The bounds of one incoming connection, from the node's settings."""
    return ServeLimits(
        limits=config.limits,
        # One whole message per stream; after the proof, request bytes up
        # to the receive window.
        unproven_bytes=config.unauthenticated_buffer_bytes,
        proven_window=config.receive_window_bytes,
        proven_request_bytes=config.request_bytes_after_proof,
        authenticate_timeout_seconds=config.authenticate_timeout_seconds,
        request_timeout_seconds=config.request_timeout_seconds,
    )


class _PeerProtocol(CallServerProtocol):
    """One incoming connection from another peer."""

    shutdown_reason = "this peer is shutting down"
    too_many_bytes_reason = "too many request bytes"
    busy_reason = "this peer is busy; retry later"
    evicted_reason = "too many connections: the oldest that proved no identity was closed"

    def __init__(self, *args: Any, hub: ListenerHub, limits: ServeLimits, **kwargs: Any) -> None:
        self._listener = hub
        self._gate = hub.gate()
        super().__init__(*args, hub=hub, budget=hub.budget, limits=limits, **kwargs)
        hub.protocols[self] = None

    def _identity_proven(self) -> bool:
        return self._gate.proven is not None

    @property
    def evictable(self) -> bool:
        return self._open and self._address_key is not None and not self._identity_proven()

    def evict(self) -> None:
        key, self._address_key = self._address_key, None
        if key is not None:
            self._listener.release(key)
        self.close_with_reason(CloseCode.TOO_MANY, self.evicted_reason)

    def _connection_ended(self) -> None:
        self._listener.protocols.pop(self, None)

    def _request_received(self, stream_id: int, stream: ServedStream, request: Request) -> None:
        outcome: Response | DirectMessage
        try:
            outcome = self._gate.handle(request.call)
        except ServiceError as error:
            outcome = ErrorResponse.from_exception(error)
        if isinstance(outcome, DirectMessage):
            # The message's bytes stay counted (this connection's request
            # budget, the shared budget) until the host is done with it, even
            # if the stream is reset meanwhile: a peer cannot queue more host
            # work than its budget holds.
            held = self._take_request_bytes(stream)
            host = self._listener.deliver(outcome)
            host.add_done_callback(lambda _task: self._release_bytes(held))
            stream.task = asyncio.create_task(self._answer(stream_id, stream, host))
            return
        self._release_request(stream)
        self._respond(stream_id, stream, outcome)

    async def _answer(
        self, stream_id: int, stream: ServedStream, host: asyncio.Future[Response]
    ) -> None:
        try:
            # Shielded: a reset stream must not interrupt the host.
            self._respond(stream_id, stream, await asyncio.shield(host))
        except asyncio.CancelledError:
            pass  # the stream or the connection went away; the host call goes on
        finally:
            self._forget_when_idle(stream_id, stream)


@dataclass(slots=True)
class PeerListener:
    """A bound UDP socket answering peer calls."""

    bound: CallListener
    hub: ListenerHub
    host: str

    @property
    def port(self) -> int:
        return self.bound.port

    async def close(self, within: float = 5.0) -> None:
        """Refuse new connections, close the open ones, let host calls finish."""
        self.hub.accepting = False
        for protocol in list(self.hub.protocols):
            protocol.close_with_reason(CloseCode.SHUTDOWN, _PeerProtocol.shutdown_reason)
        await self.hub.drain(within)
        self.bound.close()


async def start_listener(hub: ListenerHub) -> PeerListener:
    """Bind the configured host and port (0 = any free port) and answer peer calls there."""
    config = hub.config
    limits = serve_limits(config)

    def create_protocol(*args: Any, **kwargs: Any) -> _PeerProtocol:
        return _PeerProtocol(*args, hub=hub, limits=limits, **kwargs)

    bound = await listen(
        config.listen_host,
        config.listen_port,
        alpn=PEER_ALPN,
        idle_timeout=config.idle_timeout_seconds,
        certificate=hub.certificate.certificate,
        private_key=hub.certificate.private_key,
        create_protocol=create_protocol,
    )
    return PeerListener(bound, hub, config.listen_host)
