"""Registration, usernames (resolve both ways, many keys at once) and account deletion.

RegisterUser creates the account of an identity that has none, or renames
the one it has. How a new account is admitted is the server's
``registration`` mode: ``invite`` needs an operator's invite code, used up
in the transaction that creates the account; ``open`` admits anyone, at
most ``registrations_per_address_per_hour`` per source address on this node
(a registration that brings a code is admitted by the code instead).

Two usernames are one name when they are one up to case, compatibility
forms and confusable characters, or when one looks like the other as
spelled (:mod:`qpq_server._usernames`: each name's keys, the UTS #39
skeletons of its case fold and of its spelling); answers carry the
spelling that was registered. A name that mixes scripts that pass for one
another is refused (:func:`qpq_server._usernames.check_registrable`).
The storage stores a name's keys and checks that nobody else holds them
in one transaction. An identity has at most one username; registering
another one replaces it, registering the same one again (in any case) is
a no-op. A name given up (by a rename or a deleted account) stays reserved
for its former owner for ``username_cooldown_days``: nobody else can take
it meanwhile and pose as them to people who still know the name, while
they may take it back.
"""

from __future__ import annotations

from qpq_proto import (
    AccountStatus,
    DeleteAccount,
    Done,
    RegisterUser,
    ResolveIdentities,
    ResolveIdentity,
    ResolveUser,
    UserKey,
    Username,
    Usernames,
)
from qpq_proto.errors import NotFoundError, RateLimitedError
from qpq_proto.quic import address_key
from qpq_server._accounts import AccountState, Registration, Status, invite_hash
from qpq_server._config import REGISTRATION_INVITE, REGISTRATION_OPEN
from qpq_server._context import UNKNOWN_ADDRESS_KEY, CallContext
from qpq_server._logging import get_logger, short_key
from qpq_server._ops_accounts import deletion_notice
from qpq_server._usernames import check_registrable

__all__ = [
    "delete_account",
    "register_user",
    "resolve_identities",
    "resolve_identity",
    "resolve_user",
]

_log = get_logger("users")
_DAY_MS = 24 * 3600 * 1000


def _cooldown_ms(ctx: CallContext) -> int:
    return int(ctx.app.config.username_cooldown_days * _DAY_MS)


async def register_user(ctx: CallContext, call: RegisterUser) -> Done:
    identity = ctx.identity()
    check_registrable(call.username)
    app = ctx.app
    mode = app.config.registration_mode
    if ctx.connection.account is None and mode == REGISTRATION_OPEN and not call.invite:
        peer = ctx.connection.peer
        address = UNKNOWN_ADDRESS_KEY if peer is None else address_key(peer.host)
        if not app.accounts.admit_registration(address):
            raise RateLimitedError(
                "too many accounts were registered from this address lately; try again later",
                field="username",
            )
    registered = await app.storage.register_account(
        Registration(
            identity_key=identity,
            username=call.username,
            invite_hash=invite_hash(call.invite) if call.invite else None,
            invite_required=mode == REGISTRATION_INVITE,
            now_ms=app.clock.wall_ms(),
            cooldown_ms=_cooldown_ms(ctx),
            renames_per_day=app.config.account_renames_per_day,
        )
    )
    if registered.created:
        ctx.connection.account = AccountState(registered.account_key, Status.ACTIVE)
        app.metrics.registrations.labels(mode).inc()
        if registered.invite_id is not None:
            app.metrics.invites_used.labels(mode).inc()
        fields = {"identity": short_key(identity), "registration": mode}
        if registered.invite_id is not None:
            fields["invite"] = str(registered.invite_id)
        _log.info("account registered", extra={"fields": fields})
    return Done()


async def resolve_user(ctx: CallContext, call: ResolveUser) -> UserKey:
    identity = await ctx.app.storage.resolve_username(call.username)
    if identity is None:
        raise NotFoundError("no such username", field="username")
    return UserKey(identity_key=identity)


async def resolve_identity(ctx: CallContext, call: ResolveIdentity) -> Username:
    username = await ctx.app.storage.resolve_identity(call.identity_key)
    if username is None:
        raise NotFoundError("this identity has no username", field="identity_key")
    return Username(username=username)


async def resolve_identities(ctx: CallContext, call: ResolveIdentities) -> Usernames:
    # One query for the lot; a key asked twice is answered twice. The call
    # costs tokens by its count (call_cost), as that many ResolveIdentity would
    # cost more. Each key's account status comes along: members see a
    # suspended or deleted account as such.
    found = await ctx.app.storage.name_statuses(call.identity_keys)
    usernames = []
    statuses = []
    for key in call.identity_keys:
        name, status = found.get(key, ("", None))
        usernames.append(name)
        statuses.append(AccountStatus.UNKNOWN if status is None else status.wire)
    return Usernames(usernames=tuple(usernames), statuses=tuple(statuses))


async def delete_account(ctx: CallContext, _call: DeleteAccount) -> Done:
    identity = ctx.identity()
    app = ctx.app
    now_ms = app.clock.wall_ms()
    deleted = await app.storage.delete_account(
        identity,
        now_ms=now_ms,
        reason="deleted by its owner",
        notice=deletion_notice(
            identity, now_ms, app.limits.message_ttl_seconds * 1000, app.limits.queue_depth
        ),
    )
    for member in deleted.notified:
        app.notifier.notify(member)
    # Refused from now on; this and its other connections (on every node)
    # are closed once the nodes see the change (qpq_server._account_watch).
    ctx.connection.account = AccountState(deleted.account_key, Status.DELETED)
    app.metrics.accounts_deleted.labels("owner").inc()
    fields = {"identity": short_key(identity), "groups": len(deleted.groups)}
    _log.info("account deleted by its owner", extra={"fields": fields})
    return Done()
