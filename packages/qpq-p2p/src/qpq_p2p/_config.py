"""How a peer node behaves: one frozen dataclass, built at the edge.

Nothing in this package reads the environment; a host (the qpq command)
builds a :class:`PeerConfig` from its settings and flags and passes it in.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from qpq_proto import DEFAULT_LIMITS, IDENTITY_KEY_BYTES, Limits

__all__ = ["PeerConfig", "StaticPeer"]

_KIB = 1024
_MIB = 1024 * _KIB


@dataclass(frozen=True, slots=True)
class StaticPeer:
    """An address configured by hand for a peer's identity key."""

    identity_key: bytes
    host: str
    port: int

    def __post_init__(self) -> None:
        if len(self.identity_key) != IDENTITY_KEY_BYTES:
            raise ValueError(f"identity_key must be {IDENTITY_KEY_BYTES} bytes")
        if not self.host or not 0 < self.port < 65536:
            raise ValueError("a static peer needs a host and a port in 1..65535")
        # Dialed as it is: a node never asks a resolver where a peer is.
        _ip(self.host)


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """Settings of one peer node.

    Attributes:
        listen_host: address the listener binds (``0.0.0.0``: every IPv4
            interface; ``::`` for IPv6).
        listen_port: UDP port; 0 picks a free one.
        advertise_hosts: addresses published to the server and on the LAN;
            empty: ``listen_host`` when it is a concrete address, else the
            address of the interface that holds the default route.
        static_peers: addresses configured by hand (tried first).
        lan_discovery: advertise and browse ``_qpq._udp.local.`` by mDNS.
            Off by default: it multicasts on ``mdns_interfaces``.
        mdns_interfaces: interface addresses mDNS uses; empty: every one.
        mdns_rotation_seconds: how long one advertised id lasts.
        max_advertised_groups: groups a node advertises an id for at once.
        connect_timeout_seconds: to open and authenticate a peer connection.
        ack_timeout_seconds: the longest a send waits for every member's
            acknowledgement (the peer's host persisted it), counted from the
            start of the send, connecting included; past it the message
            goes through the server as well, while the late attempts go on
            until ``direct_timeout_seconds``.
        direct_timeout_seconds: the longest one direct attempt may take in
            all (resolving, connecting, proving, the acknowledgement).
        idle_timeout_seconds: a peer connection unused this long is closed.
        authenticate_timeout_seconds: an incoming connection that has not
            proven a member's identity this long after it opened is closed.
        request_timeout_seconds: a request must arrive in full this long
            after its first byte, else it is answered ``malformed_request``
            and its bytes are freed.
        unreachable_backoff_seconds: after a failed direct attempt, messages
            to that peer go straight through the server for this long.
        max_addresses_per_peer: addresses one direct attempt tries for a
            peer, in the order its resolvers gave them; only IP literals
            are ever dialed (a name is never resolved).
        max_direct_recipients: larger groups always go through the server
            (its fan-out is one upload instead of one per member).
        max_connections: incoming connections at once.
        max_connections_per_address: incoming connections from one address.
        unauthenticated_buffer_bytes: what an incoming connection may make
            the listener hold before it proved an identity (QUIC credit and
            request bytes alike).
        receive_window_bytes: QUIC connection credit once proven.
        receive_budget_bytes: what all incoming connections together may
            make the listener hold.
        limits: message size caps (qpq-proto's).
    """

    listen_host: str = "0.0.0.0"  # noqa: S104 - a listener reachable by the LAN is the point
    listen_port: int = 0
    advertise_hosts: tuple[str, ...] = ()
    static_peers: tuple[StaticPeer, ...] = ()
    lan_discovery: bool = False
    mdns_interfaces: tuple[str, ...] = ()
    mdns_rotation_seconds: float = 600.0
    max_advertised_groups: int = 16
    connect_timeout_seconds: float = 2.0
    ack_timeout_seconds: float = 5.0
    direct_timeout_seconds: float = 10.0
    idle_timeout_seconds: float = 60.0
    authenticate_timeout_seconds: float = 5.0
    request_timeout_seconds: float = 60.0
    unreachable_backoff_seconds: float = 30.0
    max_addresses_per_peer: int = 4
    max_direct_recipients: int = 16
    max_connections: int = 64
    max_connections_per_address: int = 8
    unauthenticated_buffer_bytes: int = 64 * _KIB
    receive_window_bytes: int = 16 * _MIB
    receive_budget_bytes: int = 128 * _MIB
    limits: Limits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        if not 0 <= self.listen_port < 65536:
            raise ValueError("listen_port must be in 0..65535")
        for host in (self.listen_host, *self.advertise_hosts, *self.mdns_interfaces):
            _ip(host)
        positive = (
            "mdns_rotation_seconds",
            "max_advertised_groups",
            "connect_timeout_seconds",
            "ack_timeout_seconds",
            "direct_timeout_seconds",
            "idle_timeout_seconds",
            "authenticate_timeout_seconds",
            "request_timeout_seconds",
            "max_connections",
            "max_connections_per_address",
            "max_addresses_per_peer",
            "unauthenticated_buffer_bytes",
            "receive_window_bytes",
            "receive_budget_bytes",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.unreachable_backoff_seconds < 0 or self.max_direct_recipients < 0:
            raise ValueError("unreachable_backoff_seconds and max_direct_recipients must be >= 0")
        if self.receive_window_bytes < self.limits.max_message_bytes:
            raise ValueError("receive_window_bytes must hold one whole message")

    @property
    def request_bytes_after_proof(self) -> int:
        """Bytes of requests and unfinished deliveries a proven connection may hold."""
        return self.receive_window_bytes


def _ip(host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
