"""Where a peer can be reached, and the resolvers that find out.

A node asks its resolvers in order (static addresses, mDNS on the LAN, the
server's rendezvous) and tries what they return; tests inject their own.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from qpq_p2p._config import StaticPeer
from qpq_proto import format_host_port

__all__ = ["AddressSource", "PeerAddress", "Resolver", "StaticResolver", "dialable"]


class AddressSource(enum.StrEnum):
    """How an address was found."""

    STATIC = "static"
    MDNS = "mdns"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """A UDP address a peer may listen on."""

    host: str
    port: int
    source: AddressSource

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


def dialable(address: PeerAddress) -> bool:
    """Whether ``address`` may be dialed: an IP literal a peer can listen on.

    A host name is never resolved: the lookup would run outside the
    connect timeout, and tell a resolver whom we are about to talk to.
    """
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return False
    return not (ip.is_unspecified or ip.is_multicast) and 0 < address.port < 65536


class Resolver(Protocol):
    """Finds addresses for an identity key (an empty answer: none known)."""

    async def resolve(self, identity_key: bytes) -> tuple[PeerAddress, ...]:
        """Addresses to try for ``identity_key``, best first."""
        ...


class StaticResolver:
    """Addresses configured by hand."""

    def __init__(self, peers: Iterable[StaticPeer]) -> None:
        self._peers: dict[bytes, list[PeerAddress]] = {}
        for peer in peers:
            self._peers.setdefault(peer.identity_key, []).append(
                PeerAddress(peer.host, peer.port, AddressSource.STATIC)
            )

    async def resolve(self, identity_key: bytes) -> tuple[PeerAddress, ...]:
        """The configured addresses of ``identity_key``."""
        return tuple(self._peers.get(identity_key, ()))
