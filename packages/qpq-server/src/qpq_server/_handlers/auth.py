"""Challenge and Authenticate: a connection proves possession of its identity key
(and learns the server's limits from the challenge), and learns whose account it is."""

from __future__ import annotations

import secrets

from qpq_proto import (
    NONCE_BYTES,
    Authenticate,
    Challenge,
    ChallengeNonce,
    Done,
    challenge_transcript,
)
from qpq_proto.errors import UnauthenticatedError
from qpq_server._context import CallContext
from qpq_server._mls import verify_signature
from qpq_server._ops_accounts import refusal


async def challenge(ctx: CallContext, _call: Challenge) -> ChallengeNonce:
    # A new challenge replaces any earlier one: only the latest nonce is answerable.
    nonce = secrets.token_bytes(NONCE_BYTES)
    ctx.connection.nonce = nonce
    # The limits a client must know before it sends (the largest message it
    # may publish) or prunes (how long a message can still arrive), announced
    # in the call every client makes first (appended fields, protocol.md §10).
    limits = ctx.app.limits
    return ChallengeNonce(
        nonce=nonce,
        max_payload_bytes=limits.max_payload_bytes,
        max_message_bytes=limits.max_message_bytes,
        message_ttl_seconds=limits.message_ttl_seconds,
        stream_acks=True,
    )


async def authenticate(ctx: CallContext, call: Authenticate) -> Done:
    nonce, ctx.connection.nonce = ctx.connection.nonce, None  # single use, even on failure
    if nonce is None:
        raise UnauthenticatedError("ask for a Challenge on this connection first")
    transcript = challenge_transcript(nonce, call.identity_key)
    verify_signature(call.identity_key, transcript, call.signature)
    # Whose account it is, read once per connection: a suspended or deleted
    # account is refused here already (and a connection whose account stops
    # being active later is closed: qpq_server._account_watch).
    # The identity is set before the read: a suspension that commits while
    # the read is under way is either seen by it or found by the watch's
    # next poll on this connection, which it can only close once it knows
    # whose it is. Until the read answers, the connection has no account,
    # which admits no identity call but RegisterUser (whose transaction
    # checks the account again).
    connection = ctx.connection
    connection.account = None
    connection.identity = call.identity_key
    try:
        state = await ctx.app.storage.account_of(call.identity_key)
    except BaseException:
        connection.identity = None
        raise
    if state is not None and not state.active:
        connection.identity = None
        raise refusal(state)
    if connection.account is None:
        # Else the watch marked the account as no longer active meanwhile
        # (and is closing the connection): that mark stands.
        connection.account = state
    return Done()
