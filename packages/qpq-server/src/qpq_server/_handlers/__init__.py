"""One handler per call, grouped by concept; :data:`HANDLERS` routes to them.

A handler takes the call context and the decoded call, and returns the
call's result or raises a ``ServiceError``. Most handlers are ``async def``
(they wait for storage); one that can often answer without waiting is a
plain function returning either the result or a coroutine for it, and the
transport then answers in the same event-loop turn the request arrived in.
Access checks that apply to every call (token, rate limits, whether an
identity must be proven) live in the dispatcher, driven by
:data:`qpq_proto.ACCESS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qpq_proto import (
    Ack,
    Authenticate,
    Challenge,
    CountKeyPackages,
    CreateGroup,
    DeleteAccount,
    Fetch,
    FetchGroupInfo,
    FetchKeyPackage,
    FetchLink,
    FetchWait,
    Health,
    ListDevices,
    PostLink,
    Publish,
    PublishEndpoints,
    RegisterDevice,
    RegisterUser,
    ReplaceGroupInfo,
    ResolveEndpoints,
    ResolveIdentities,
    ResolveIdentity,
    ResolveUser,
    RevokeDevice,
    Subscribe,
    SubscribeWithAcks,
    UploadKeyPackages,
    UploadLastResort,
)
from qpq_server._handlers import (
    auth,
    delivery,
    devices,
    endpoints,
    groups,
    health,
    keys,
    users,
)

__all__ = ["HANDLERS"]

#: ``(ctx, call) -> result``, or a coroutine that returns the result.
Handler = Callable[[Any, Any], Any]

HANDLERS: dict[type[Any], Handler] = {
    Health: health.health,
    Challenge: auth.challenge,
    Authenticate: auth.authenticate,
    RegisterUser: users.register_user,
    ResolveUser: users.resolve_user,
    ResolveIdentity: users.resolve_identity,
    ResolveIdentities: users.resolve_identities,
    DeleteAccount: users.delete_account,
    UploadKeyPackages: keys.upload_key_packages,
    UploadLastResort: keys.upload_last_resort,
    FetchKeyPackage: keys.fetch_key_package,
    CountKeyPackages: keys.count_key_packages,
    CreateGroup: groups.create_group,
    Publish: groups.publish,
    FetchGroupInfo: groups.fetch_group_info,
    ReplaceGroupInfo: groups.replace_group_info,
    Fetch: delivery.fetch,
    FetchWait: delivery.fetch_wait,
    Ack: delivery.ack,
    Subscribe: delivery.subscribe,
    SubscribeWithAcks: delivery.subscribe,
    PublishEndpoints: endpoints.publish_endpoints,
    ResolveEndpoints: endpoints.resolve_endpoints,
    RegisterDevice: devices.register_device,
    ListDevices: devices.list_devices,
    RevokeDevice: devices.revoke_device,
    PostLink: devices.post_link,
    FetchLink: devices.fetch_link,
}
