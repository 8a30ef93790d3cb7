"""Health: liveness and the state of storage, for probes and load balancers."""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any

from qpq_proto import Health, HealthStatus
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
