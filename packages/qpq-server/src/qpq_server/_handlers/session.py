"""Health, Challenge and Authenticate: liveness and per-connection identity proof."""

from __future__ import annotations

import secrets
import time
from collections.abc import Coroutine
from typing import Any

from qpq_proto import (
    NONCE_BYTES,
    Authenticate,
    Challenge,
    ChallengeNonce,
    Done,
    Health,
    HealthStatus,
    challenge_transcript,
)
from qpq_proto.errors import UnauthenticatedError
from qpq_server._context import CallContext

#: Health answers from a storage check that started at most this long ago, so a
#: broken store shows within this bound, and a health poller cannot turn each
#: of its calls into a database round trip.
STORAGE_PROBE_SECONDS = 1.0


def health(ctx: CallContext, _call: Health) -> HealthStatus | Coroutine[Any, Any, HealthStatus]:
    probe = ctx.app.storage_probe
    if ctx.app.clock.monotonic() - probe.started_at < STORAGE_PROBE_SECONDS:
        return _health_status(ctx, probe.status)
    return _probe_storage(ctx)


async def _probe_storage(ctx: CallContext) -> HealthStatus:
    started_at = ctx.app.clock.monotonic()
    storage = await ctx.app.storage.check()
    probe = ctx.app.storage_probe
    if started_at >= probe.started_at:  # an older probe finishing late must not win
        probe.status, probe.started_at = storage, started_at
    return _health_status(ctx, storage)


def _health_status(ctx: CallContext, storage: str) -> HealthStatus:
    return HealthStatus(
        status="ok" if storage == "ok" else "degraded",
        version=ctx.app.version,
        uptime_seconds=max(0, int(time.monotonic() - ctx.app.started_at)),
        storage=storage,
    )


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
    ctx.app.mls.verify_signature(call.identity_key, transcript, call.signature)
    ctx.connection.identity = call.identity_key
    return Done()
