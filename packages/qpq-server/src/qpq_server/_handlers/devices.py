"""Devices of an account: register, list, revoke; and the link mailbox.

A device registers itself (RegisterDevice) on a connection that proved its
key: the certificate must verify (``qpq_core.DeviceCertificate``), name
that key, and name an active account; from then on the key acts for the
account. Any device of an account lists its devices (ListDevices, also for
other accounts: an inviter claims one KeyPackage per device) and revokes
another (RevokeDevice), which closes the revoked device's connections on
every node within a poll (qpq_server._account_watch).

The link mailbox (PostLink, FetchLink) carries a new device's request to a
device of the account it asks to join, and that device's answer back. Who
calls says which side it is: a connection with no account yet is the new
device, one with an account the approving device. The server never reads
either payload (docs/protocol.md, "Linking a device").
"""

from __future__ import annotations

from qpq_proto import (
    Devices,
    Done,
    FetchLink,
    LinkPayload,
    ListDevices,
    PostLink,
    RegisterDevice,
    RevokeDevice,
)
from qpq_proto.errors import (
    ForbiddenError,
    InvalidArgumentError,
    NotFoundError,
    PayloadTooLargeError,
)
from qpq_server._context import CallContext
from qpq_server._logging import get_logger, short_key
from qpq_server._mls import verify_device_certificate
from qpq_server._ops_devices import OTHER_ACCOUNT, LinkRequest

__all__ = [
    "LINK_TRIES_PER_HOUR",
    "LINK_TTL_MS",
    "fetch_link",
    "list_devices",
    "post_link",
    "register_device",
    "revoke_device",
]

_log = get_logger("devices")
#: How long a link request waits for its approval.
LINK_TTL_MS = 10 * 60 * 1000
#: The largest link request a key without an account may leave in a mailbox.
MAX_LINK_REQUEST_BYTES = 1024
#: Link codes a device of an account may try in an hour (a wrong guess too).
LINK_TRIES_PER_HOUR = 20.0


async def register_device(ctx: CallContext, call: RegisterDevice) -> Done:
    identity = ctx.identity()
    certificate = verify_device_certificate(call.certificate)
    if certificate.device_key != identity:
        raise ForbiddenError("the certificate is for another device key", field="certificate")
    if certificate.account_key == identity:
        raise InvalidArgumentError("an account key is not its own device", field="certificate")
    await ctx.app.storage.register_device(
        identity,
        certificate.account_key,
        name=certificate.name,
        certificate=call.certificate,
        issued_at_ms=certificate.issued_at * 1000,
    )
    state = await ctx.app.storage.account_of(identity)
    if ctx.connection.account is None:
        ctx.connection.account = state
    fields = {"device": short_key(identity), "account": short_key(certificate.account_key)}
    _log.info("device registered", extra={"fields": fields})
    return Done()


async def list_devices(ctx: CallContext, call: ListDevices) -> Devices:
    devices = await ctx.app.storage.list_devices(call.account_key)
    return Devices(
        device_keys=tuple(d.device_key for d in devices),
        certificates=tuple(d.certificate for d in devices),
    )


async def revoke_device(ctx: CallContext, call: RevokeDevice) -> Done:
    account = ctx.account()
    if call.device_key == ctx.identity():
        raise InvalidArgumentError(
            "a device cannot remove itself: remove it from another device", field="device_key"
        )
    await ctx.app.storage.revoke_device(account, call.device_key, now_ms=ctx.app.clock.wall_ms())
    fields = {"device": short_key(call.device_key), "account": short_key(account)}
    _log.info("device revoked", extra={"fields": fields})
    # The watch of each node (this one too) closes its connections within a poll.
    return Done()


async def post_link(ctx: CallContext, call: PostLink) -> Done:
    identity = ctx.identity()
    now = ctx.app.clock.wall_ms()
    state = ctx.connection.account
    if state is None:
        # A new device: it opens the mailbox with its request.
        if not call.username:
            raise InvalidArgumentError("name the account to join", field="username")
        # A request is a few keys and a name; only an account's answer is big.
        if len(call.payload) > MAX_LINK_REQUEST_BYTES:
            raise PayloadTooLargeError(
                f"a link request is at most {MAX_LINK_REQUEST_BYTES} bytes", field="payload"
            )
        await ctx.app.storage.post_link_request(
            call.mailbox,
            username=call.username,
            device_key=identity,
            request=call.payload,
            now_ms=now,
            expires_at_ms=now + LINK_TTL_MS,
        )
        return Done()
    await ctx.app.storage.answer_link(
        call.mailbox, state.account_key, identity, call.payload, now_ms=now
    )
    return Done()


async def fetch_link(ctx: CallContext, call: FetchLink) -> LinkPayload:
    identity = ctx.identity()
    now = ctx.app.clock.wall_ms()
    state = ctx.connection.account
    if state is None:
        answer = await ctx.app.storage.take_link_answer(call.mailbox, identity, now_ms=now)
        return LinkPayload(payload=answer)
    found = await ctx.app.storage.read_link_request(
        call.mailbox, state.account_key, now_ms=now, tries_per_hour=LINK_TRIES_PER_HOUR
    )
    if isinstance(found, LinkRequest):
        return LinkPayload(payload=found.request, device_key=found.device_key)
    if found == OTHER_ACCOUNT:
        raise ForbiddenError(found, field="mailbox")
    raise NotFoundError(found, field="mailbox")
