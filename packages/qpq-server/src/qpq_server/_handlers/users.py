"""Usernames (register, resolve both ways, many keys at once) and account deletion.

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
from qpq_proto.errors import NotFoundError
from qpq_server._context import CallContext
from qpq_server._logging import get_logger, short_key
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
    await ctx.app.storage.register_username(
        identity,
        call.username,
        now_ms=ctx.app.clock.wall_ms(),
        cooldown_ms=_cooldown_ms(ctx),
    )
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
    # cost more.
    found = await ctx.app.storage.resolve_identities(call.identity_keys)
    return Usernames(usernames=tuple(found.get(key, "") for key in call.identity_keys))


async def delete_account(ctx: CallContext, _call: DeleteAccount) -> Done:
    identity = ctx.identity()
    await ctx.app.storage.delete_account(identity, now_ms=ctx.app.clock.wall_ms())
    _log.info("account deleted", extra={"fields": {"identity": short_key(identity)}})
    return Done()
