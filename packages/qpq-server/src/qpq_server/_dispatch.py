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

import functools
import hmac
import ipaddress
import math
import time
from collections.abc import Coroutine
from types import CoroutineType
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

__all__ = ["Answer", "Dispatcher", "PendingAnswer", "Subscription", "address_key", "call_cost"]

_log = get_logger("calls")

#: KeyPackages validated (parse + two signature checks) for one token.
KEY_PACKAGES_PER_TOKEN = 10
#: Queue rows written by a group publish for one token.
RECIPIENTS_PER_TOKEN = 100


@functools.lru_cache(maxsize=4096)  # parsing an address costs more than the rest of a check
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


#: What a call is answered with: a result, an ErrorResponse, or a subscribe stream.
Answer = Response | Subscription


class PendingAnswer:
    """A call whose handler waits (storage, a long-poll): await :meth:`wait` in a task."""

    __slots__ = ("_dispatcher", "_name", "_outcome", "_started")

    def __init__(
        self, dispatcher: Dispatcher, name: str, started: float, outcome: Coroutine[Any, Any, Any]
    ) -> None:
        self._dispatcher = dispatcher
        self._name = name
        self._started = started
        self._outcome = outcome

    async def wait(self) -> Answer:
        """The answer, with the same error mapping and metrics as an immediate one."""
        dispatcher = self._dispatcher
        try:
            answer = await self._outcome
        except Exception as error:  # noqa: BLE001 - see Dispatcher._failed
            answer = dispatcher._failed(self._name, error)
        return dispatcher._done(self._name, self._started, answer)

    def close(self) -> None:
        """Drop the handler if :meth:`wait` never ran (its task was cancelled first)."""
        self._outcome.close()


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
        # prometheus_client's labels() is a locked dict lookup plus argument
        # checks; a call pays it three times, so keep each child once bound.
        self._calls: dict[str, Any] = {}
        self._latency: dict[str, Any] = {}
        self._errors: dict[tuple[str, str], Any] = {}

    def _check_token(self, token: str) -> None:
        if not hmac.compare_digest(token.encode("utf-8"), self._token):
            raise UnauthenticatedError("missing or wrong access token", field="token")

    def _route(self, request: Request, connection: ConnectionState) -> Any:
        """The handler's outcome: a result, or a coroutine that returns one."""
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
        return HANDLERS[call_type](ctx, request.call)

    def start(self, request: Request, connection: ConnectionState) -> Answer | PendingAnswer:
        """The answer to ``request`` if it is ready now, else the call still waiting.

        A call whose checks fail, or whose handler needs no waiting, is
        answered right here, so the transport can send the answer in the
        same event-loop turn; only a call that waits costs a task.
        """
        name = type(request.call).__name__
        started = time.perf_counter()
        calls = self._calls.get(name)
        if calls is None:
            calls = self._calls[name] = self.metrics.calls.labels(name)
        calls.inc()
        try:
            outcome = self._route(request, connection)
        except Exception as error:  # noqa: BLE001 - see _failed
            return self._done(name, started, self._failed(name, error))
        if type(outcome) is CoroutineType:
            return PendingAnswer(self, name, started, outcome)
        answer: Answer = outcome
        return self._done(name, started, answer)

    async def dispatch(self, request: Request, connection: ConnectionState) -> Answer:
        """The answer to ``request``: a result, an ErrorResponse or a Subscription."""
        answer = self.start(request, connection)
        if isinstance(answer, PendingAnswer):
            return await answer.wait()
        return answer

    def _failed(self, name: str, error: Exception) -> ErrorResponse:
        """A coded answer for ``error``; a handler bug becomes InternalError, never a crash."""
        if isinstance(error, ServiceError):
            self._count_error(name, error.code.name.lower())
            return ErrorResponse.from_exception(error)
        self._count_error(name, "internal")
        # exc_info from the error itself: this also runs outside its except block.
        _log.error(
            "call failed unexpectedly",
            exc_info=(type(error), error, error.__traceback__),
            extra={"fields": {"call": name}},
        )
        return ErrorResponse.from_exception(InternalError("the server failed internally"))

    def _count_error(self, name: str, code: str) -> None:
        errors = self._errors.get((name, code))
        if errors is None:
            errors = self._errors[(name, code)] = self.metrics.errors.labels(name, code)
        errors.inc()

    def _done(self, name: str, started: float, answer: Answer) -> Answer:
        latency = self._latency.get(name)
        if latency is None:
            latency = self._latency[name] = self.metrics.latency.labels(name)
        latency.observe(time.perf_counter() - started)
        return answer
