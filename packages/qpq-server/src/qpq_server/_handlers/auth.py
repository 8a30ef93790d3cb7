"""Challenge and Authenticate: a connection proves possession of its identity key."""

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


async def challenge(ctx: CallContext, _call: Challenge) -> ChallengeNonce:
    # A new challenge replaces any earlier one: only the latest nonce is answerable.
    nonce = secrets.token_bytes(NONCE_BYTES)
    ctx.connection.nonce = nonce
    return ChallengeNonce(nonce=nonce)


async def authenticate(ctx: CallContext, call: Authenticate) -> Done:
    nonce, ctx.connection.nonce = ctx.connection.nonce, None  # single use, even on failure
    if nonce is None:
        raise UnauthenticatedError("ask for a Challenge on this connection first")
    transcript = challenge_transcript(nonce, call.identity_key)
    verify_signature(call.identity_key, transcript, call.signature)
    ctx.connection.identity = call.identity_key
    return Done()
