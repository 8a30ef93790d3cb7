"""Rendezvous through the server: publish our endpoints, resolve a peer's.

The server keeps what each identity published (``PublishEndpoints``, which
needs a proven identity) together with the address it saw that connection
come from, and serves both (``ResolveEndpoints``). Behind a NAT the
published addresses are private ones; the observed address is the NAT's
public side. Its port is the one of the connection to the server, not of
the listener, so the candidate taken from it is the observed host with
each published port: a NAT that keeps the listener's port (or forwards
it) is crossed; one that rewrites ports is not, and the message then goes
through the server. There is no hole punching in this release.
"""

from __future__ import annotations

from typing import Protocol

from qpq_p2p._discovery import AddressSource, PeerAddress
from qpq_proto import Endpoint, PeerEndpoints
from qpq_proto.errors import NotFoundError

__all__ = ["RendezvousServer", "ServerRendezvous"]


class RendezvousServer(Protocol):
    """The two server calls rendezvous needs, on a connection that proved our identity."""

    async def publish_endpoints(self, endpoints: tuple[Endpoint, ...]) -> None:
        """``PublishEndpoints``: replace what we published."""
        ...

    async def resolve_endpoints(self, identity_key: bytes) -> PeerEndpoints:
        """``ResolveEndpoints``: a peer's endpoints and observed address (NotFoundError: none)."""
        ...


class ServerRendezvous:
    """A resolver backed by the server's endpoint directory."""

    def __init__(self, server: RendezvousServer) -> None:
        self.server = server

    async def publish(self, endpoints: tuple[Endpoint, ...]) -> None:
        """Publish where we listen (replaces what we published before)."""
        await self.server.publish_endpoints(endpoints)

    async def resolve(self, identity_key: bytes) -> tuple[PeerAddress, ...]:
        """The peer's first published address, the observed host with its port, then the rest.

        The observed address comes second, not last: a node dials only the
        first few addresses of a peer (``max_addresses_per_peer``), and
        behind a NAT it is the one that works.
        """
        try:
            found = await self.server.resolve_endpoints(identity_key)
        except NotFoundError:
            return ()
        published = [PeerAddress(e.host, e.port, AddressSource.SERVER) for e in found.endpoints]
        observed = []
        if found.observed is not None:
            observed = [
                PeerAddress(found.observed.host, e.port, AddressSource.SERVER)
                for e in found.endpoints
            ]
        return tuple(dict.fromkeys([*published[:1], *observed[:1], *published, *observed]))
