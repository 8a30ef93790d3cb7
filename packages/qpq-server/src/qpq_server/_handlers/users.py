"""Usernames (register, resolve both ways) and account deletion.

Usernames are unique case-insensitively: the uniqueness key is the NFKC
case-folded form, and answers carry the spelling that was registered. An
identity has at most one username; registering another one replaces it
(the old name becomes free), registering the same one again is a no-op.
"""

from __future__ import annotations

import unicodedata

from qpq_proto import (
    DeleteAccount,
    Done,
    RegisterUser,
    ResolveIdentity,
    ResolveUser,
    UserKey,
    Username,
)
from qpq_proto.errors import NotFoundError
from qpq_server._context import CallContext
from qpq_server._logging import get_logger, short_key

_log = get_logger("users")


def username_key(username: str) -> str:
    """The uniqueness key of a username (Unicode NFKC_Casefold, UAX #15/#31)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username).casefold())


async def register_user(ctx: CallContext, call: RegisterUser) -> Done:
    identity = ctx.identity()
    await ctx.app.storage.register_username(identity, call.username, username_key(call.username))
    return Done()


async def resolve_user(ctx: CallContext, call: ResolveUser) -> UserKey:
    identity = await ctx.app.storage.resolve_username(username_key(call.username))
    if identity is None:
        raise NotFoundError("no such username", field="username")
    return UserKey(identity_key=identity)


async def resolve_identity(ctx: CallContext, call: ResolveIdentity) -> Username:
    username = await ctx.app.storage.resolve_identity(call.identity_key)
    if username is None:
        raise NotFoundError("this identity has no username", field="identity_key")
    return Username(username=username)


async def delete_account(ctx: CallContext, _call: DeleteAccount) -> Done:
    identity = ctx.identity()
    await ctx.app.storage.delete_account(identity)
    _log.info("account deleted", extra={"fields": {"identity": short_key(identity)}})
    return Done()
