"""P2P rendezvous: publish one's endpoints, resolve a peer's (with the observed address)."""

from __future__ import annotations

from qpq_proto import Done, PeerEndpoints, PublishEndpoints, ResolveEndpoints
from qpq_proto.errors import NotFoundError
from qpq_server._context import CallContext
from qpq_server._storage import StoredEndpoints


async def publish_endpoints(ctx: CallContext, call: PublishEndpoints) -> Done:
    identity = ctx.identity()
    await ctx.app.storage.publish_endpoints(
        identity,
        StoredEndpoints(endpoints=call.endpoints, observed=ctx.connection.peer),
        ctx.app.clock.wall_ms(),
    )
    return Done()


async def resolve_endpoints(ctx: CallContext, call: ResolveEndpoints) -> PeerEndpoints:
    stored = await ctx.app.storage.resolve_endpoints(call.identity_key)
    if stored is None:
        raise NotFoundError("this identity published no endpoints", field="identity_key")
    return PeerEndpoints(endpoints=stored.endpoints, observed=stored.observed)
