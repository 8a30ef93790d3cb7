"""P2P rendezvous: publish one's endpoints, resolve a peer's (with the observed address).

Where a member listens is where their device is: the server tells it only
to who may send it direct messages anyway, the identity itself or a member
of a group it is in (the verified roster, kept from the commits the server
accepted). Everyone else gets the answer an identity with no endpoints
gets, so a lookup reveals neither the address nor whether the identity
exists or published anything (docs/security.md, "Direct delivery").

Only IP literals are kept, a few per identity: a host name would make
each peer that dials it ask a resolver first, outside its connect
timeout, and tell that resolver whom it is about to talk to.
"""

from __future__ import annotations

import ipaddress

from qpq_proto import Done, Endpoint, PeerEndpoints, PublishEndpoints, ResolveEndpoints
from qpq_proto.errors import InvalidArgumentError, NotFoundError
from qpq_server._context import CallContext
from qpq_server._storage import StoredEndpoints

__all__ = ["MAX_PUBLISHED_ENDPOINTS", "publish_endpoints", "resolve_endpoints"]

#: Endpoints one identity may publish: each is a dial a peer may try in turn.
MAX_PUBLISHED_ENDPOINTS = 4

#: The one answer for "nothing to tell you", whatever the reason.
_NONE_KNOWN = "no endpoints are known for this identity"


def _check_endpoint(endpoint: Endpoint) -> None:
    try:
        address = ipaddress.ip_address(endpoint.host)
    except ValueError:
        raise InvalidArgumentError(
            f"endpoint host {endpoint.host!r} is not an IP address (host names are not published)",
            field="endpoints",
        ) from None
    if address.is_unspecified or address.is_multicast:
        raise InvalidArgumentError(
            f"endpoint host {endpoint.host!r} is no address a peer can dial", field="endpoints"
        )


async def publish_endpoints(ctx: CallContext, call: PublishEndpoints) -> Done:
    identity = ctx.identity()
    if len(call.endpoints) > MAX_PUBLISHED_ENDPOINTS:
        raise InvalidArgumentError(
            f"at most {MAX_PUBLISHED_ENDPOINTS} endpoints may be published", field="endpoints"
        )
    for endpoint in call.endpoints:
        _check_endpoint(endpoint)
    await ctx.app.storage.publish_endpoints(
        identity,
        StoredEndpoints(endpoints=call.endpoints, observed=ctx.connection.peer),
        ctx.app.clock.wall_ms(),
    )
    return Done()


async def resolve_endpoints(ctx: CallContext, call: ResolveEndpoints) -> PeerEndpoints:
    requester = ctx.connection.identity
    if requester is None:
        # Not "authenticate first": that too would be an answer that differs.
        raise NotFoundError(_NONE_KNOWN, field="identity_key")
    stored = await ctx.app.storage.resolve_endpoints(call.identity_key, requester=requester)
    if stored is None:
        raise NotFoundError(_NONE_KNOWN, field="identity_key")
    return PeerEndpoints(endpoints=stored.endpoints, observed=stored.observed)
