"""Route a decoded request to its handler, after the checks every call shares.

Order: shutting down? -> rate limit by source address -> access token
(constant time) -> proven identity where the call needs one -> rate limit by
identity -> handler. A call costs one token, except batch calls whose work
grows with their size (see :func:`call_cost`), so that a burst of big
batches cannot buy more CPU or database time than a burst of small calls.
Every failure becomes a coded ErrorResponse; an unexpected exception is
logged (type and place, no data) and answered with InternalError, so no
handler bug can reach the peer or the connection.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import time
from typing import Any

from qpq_proto import ErrorResponse, Publish, Request, Response, UploadKeyPackages
from qpq_proto.errors import (
    InternalError,
    RateLimitedError,
    ServiceError,
    UnauthenticatedError,
    UnavailableError,
)
from qpq_server._context import App, CallContext, ConnectionState
from qpq_server._handlers import HANDLERS, NEEDS_IDENTITY, NEEDS_TOKEN
from qpq_server._handlers.delivery import Subscription
from qpq_server._logging import get_logger
from qpq_server._metrics import Metrics
from qpq_server._ratelimit import RateLimiter

__all__ = ["Dispatcher", "Subscription", "address_key", "call_cost"]

_log = get_logger("calls")

#: KeyPackages validated (parse + two signature checks) for one token.
KEY_PACKAGES_PER_TOKEN = 10
#: Queue rows written by a group publish for one token.
RECIPIENTS_PER_TOKEN = 100


def address_key(host: str) -> str:
    """The per-address rate-limit key: the host, or its /64 for IPv6.

    One IPv6 host normally owns a whole /64 and can send from any address
    in it; keyed by full address, it would get a fresh bucket per packet.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return host


def call_cost(call: Any) -> float:
    """Rate-limit tokens a call spends: one, or more for big batches."""
    if isinstance(call, UploadKeyPackages):
        return max(1.0, math.ceil(len(call.packages) / KEY_PACKAGES_PER_TOKEN))
    if isinstance(call, Publish):
        return max(1.0, math.ceil(len(call.recipients) / RECIPIENTS_PER_TOKEN))
    return 1.0


class Dispatcher:
    """Answers requests for one server; shared by all connections."""

    def __init__(self, app: App, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.shutting_down = False
        limits = app.limits
        self._by_address = RateLimiter(
            limits.rate_per_second, limits.rate_burst, app.clock.monotonic
        )
        self._by_identity = RateLimiter(
            limits.rate_per_second, limits.rate_burst, app.clock.monotonic
        )
        self._token = app.config.auth_token.encode("utf-8")

    def _check_token(self, token: str) -> None:
        if not hmac.compare_digest(token.encode("utf-8"), self._token):
            raise UnauthenticatedError("missing or wrong access token", field="token")

    async def _route(
        self, request: Request, connection: ConnectionState
    ) -> Response | Subscription:
        call_type = type(request.call)
        if self.shutting_down:
            raise UnavailableError("the server is shutting down")
        cost = call_cost(request.call)
        peer = connection.peer
        if peer is not None and not self._by_address.allow(address_key(peer.host), cost):
            raise RateLimitedError("too many requests from this address")
        if call_type in NEEDS_TOKEN:
            self._check_token(request.token)
        ctx = CallContext(app=self.app, connection=connection)
        if call_type in NEEDS_IDENTITY:
            identity = ctx.identity()
            if not self._by_identity.allow(identity, cost):
                raise RateLimitedError("too many requests from this identity")
        handler = HANDLERS[call_type]
        result: Response | Subscription = await handler(ctx, request.call)
        return result

    async def dispatch(
        self, request: Request, connection: ConnectionState
    ) -> Response | Subscription:
        """The answer to ``request``: a result, an ErrorResponse or a Subscription."""
        name = type(request.call).__name__
        started = time.perf_counter()
        self.metrics.calls.labels(name).inc()
        try:
            answer = await self._route(request, connection)
        except ServiceError as error:
            self.metrics.errors.labels(name, error.code.name.lower()).inc()
            answer = ErrorResponse.from_exception(error)
        except Exception:  # noqa: BLE001 - a handler bug becomes InternalError, never a crash
            self.metrics.errors.labels(name, "internal").inc()
            _log.exception("call failed unexpectedly", extra={"fields": {"call": name}})
            answer = ErrorResponse.from_exception(InternalError("the server failed internally"))
        self.metrics.latency.labels(name).observe(time.perf_counter() - started)
        return answer
