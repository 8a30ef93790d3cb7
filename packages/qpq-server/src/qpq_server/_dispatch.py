"""Route a decoded request to its handler, after the checks every call shares.

Order: shutting down? -> rate limit by source address (one shared bucket
for connections whose address is unknown) -> a peer call (qpq-p2p) is
refused unsupportedCall -> access token, when the server has one
(constant time; a server without one answers lookups of people only to an
active account) -> proven identity where the call needs one, acting for an
active account (every identity call but RegisterUser, which creates it) ->
rate limit by identity -> handler; :data:`qpq_proto.ACCESS` says what each
call needs. A
call costs one token, except batch calls whose work grows with their size
(see :func:`call_cost`), so that a burst of big batches cannot buy more
CPU or database time than a burst of small calls; and an answer costs one
token more per 64 KiB it takes beyond the first (:meth:`Dispatcher.bill_answer`,
billed once it was sent), so that a burst of fetches of a full queue pays
for the bytes it makes the server read and send. Every failure becomes a
coded ErrorResponse; an unexpected exception is logged (type and place, no
data) and answered with InternalError, so no handler bug can reach the peer
or the connection.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import time
from collections.abc import Callable, Coroutine
from types import CoroutineType
from typing import Any

from qpq_proto import (
    ACCESS,
    Access,
    ErrorResponse,
    RegisterUser,
    Request,
    ResolveEndpoints,
    ResolveIdentities,
    ResolveIdentity,
    ResolveUser,
    Response,
    UploadKeyPackages,
)
from qpq_proto.errors import (
    ForbiddenError,
    InternalError,
    RateLimitedError,
    ServiceError,
    UnauthenticatedError,
    UnavailableError,
    UnsupportedCallError,
)
from qpq_proto.quic import address_key
from qpq_server._answers import answer_tokens
from qpq_server._context import (
    NO_ACCOUNT,
    UNKNOWN_ADDRESS_KEY,
    App,
    CallContext,
    ConnectionState,
    ReserveAnswer,
)
from qpq_server._handlers import HANDLERS
from qpq_server._handlers.delivery import Subscription
from qpq_server._logging import get_logger
from qpq_server._metrics import Metrics
from qpq_server._ops_accounts import refusal
from qpq_server._ratelimit import RateLimiter, SharedRateLimiter

__all__ = [
    "UNKNOWN_ADDRESS_KEY",
    "Answer",
    "Dispatcher",
    "Outcome",
    "PendingAnswer",
    "Subscription",
    "call_cost",
]

_log = get_logger("calls")

#: KeyPackages validated (parse + two signature checks) for one token.
KEY_PACKAGES_PER_TOKEN = 10
#: Identity keys one token resolves to usernames (one indexed lookup each).
IDENTITIES_PER_TOKEN = 100


#: Calls that read what the server knows of people: behind the token where
#: the server has one, else behind an active account.
_LOOKUPS = frozenset({ResolveUser, ResolveIdentity, ResolveIdentities, ResolveEndpoints})


def _check_account(connection: ConnectionState) -> None:
    """Refuse unless the connection acts for an active account."""
    if connection.identity is None:
        raise UnauthenticatedError(
            "this server answers lookups to accounts only: Challenge, then Authenticate"
        )
    if connection.account is None:
        raise ForbiddenError(NO_ACCOUNT)
    if not connection.account.active:
        raise refusal(connection.account)


def call_cost(call: Any) -> float:
    """Rate-limit tokens a call spends: one, or more for big batches.

    Not memoised: a cache keyed by the call would keep the last calls
    alive, payloads and all (up to ``max_payload_bytes`` each).
    """
    if isinstance(call, UploadKeyPackages):
        return max(1.0, math.ceil(len(call.packages) / KEY_PACKAGES_PER_TOKEN))
    if isinstance(call, ResolveIdentities):
        return max(1.0, math.ceil(len(call.identity_keys) / IDENTITIES_PER_TOKEN))
    return 1.0


#: What a call is answered with: a result, an ErrorResponse, or a subscribe stream.
Answer = Response | Subscription


#: What a handler came to: its answer, or the exception it raised.
Outcome = Answer | Exception


class PendingAnswer:
    """A call whose handler waits (storage, a long-poll): await :meth:`wait` in a task."""

    __slots__ = ("_dispatcher", "_handler", "_name", "_started")

    def __init__(
        self, dispatcher: Dispatcher, name: str, started: float, handler: Coroutine[Any, Any, Any]
    ) -> None:
        self._dispatcher = dispatcher
        self._name = name
        self._started = started
        self._handler = handler

    async def wait(self) -> Answer:
        """The answer, finished by the dispatcher exactly as an immediate one."""
        try:
            outcome: Outcome = await self._handler
        except Exception as error:  # noqa: BLE001 - Dispatcher.finish maps it to a coded answer
            outcome = error
        return self._dispatcher.finish(self._name, self._started, outcome)

    def close(self) -> None:
        """Drop the handler if :meth:`wait` never ran (its task was cancelled first)."""
        self._handler.close()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


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
        # Nodes that share a database share each identity's bucket there;
        # source addresses stay per node, as the connections they make.
        buckets = app.storage.rate_buckets
        self._shared = (
            None
            if buckets is None
            else SharedRateLimiter(
                buckets, limits.rate_per_second, limits.rate_burst, app.clock.monotonic
            )
        )
        self._tokens: tuple[bytes, ...] = ()
        self.set_tokens(app.config.auth_token, app.config.auth_token_next)
        # prometheus_client's labels() is a locked dict lookup plus argument
        # checks; a call pays it three times, so keep each child once bound.
        self._calls: dict[str, Any] = {}
        self._latency: dict[str, Any] = {}
        self._errors: dict[tuple[str, str], Any] = {}

    def set_tokens(self, auth_token: str, auth_token_next: str = "") -> None:
        """Accept these access tokens from now on (empty ones are left out; none: no gate).

        ``auth_token_next`` is accepted beside ``auth_token`` during a
        rotation window; a SIGHUP reload calls this with the re-read values.
        """
        # Kept and compared as SHA-256 digests: equal lengths, so not even a
        # token's length shows in how long a comparison takes.
        self._tokens = tuple(_digest(token) for token in (auth_token, auth_token_next) if token)

    @property
    def accepted_tokens(self) -> int:
        """How many access tokens are accepted (0: no token gate)."""
        return len(self._tokens)

    def _check_token(self, token: str) -> None:
        # An optional gate: a server without a token admits by account alone.
        if not self._tokens:
            return
        given = _digest(token)
        # Compared with every accepted token, each in constant time, with no
        # early exit: the time taken tells neither a token nor which one matched.
        matched = False
        for accepted in self._tokens:
            matched |= hmac.compare_digest(given, accepted)
        if not matched:
            raise UnauthenticatedError("missing or wrong access token", field="token")

    async def _charge(self, identity: bytes, tokens: float, *, done: bool = False) -> None:
        if tokens <= 0:
            return
        if done:
            if self._shared is None:
                self._by_identity.debit(identity, tokens)
            else:
                await self._shared.debit(identity, tokens)
        elif not self._allow_identity(identity, tokens) and not await self._take_shared(
            identity, tokens
        ):
            raise RateLimitedError("too many requests from this identity")

    def _allow_identity(self, identity: bytes, cost: float) -> bool:
        """Admit from what this node holds; False also when only the database can tell."""
        if self._shared is None:
            return self._by_identity.allow(identity, cost)
        return self._shared.allow(identity, cost)

    async def _take_shared(self, identity: bytes, cost: float) -> bool:
        return self._shared is not None and await self._shared.take(identity, cost)

    async def _admit_then(self, identity: bytes, cost: float, run: Callable[[], Any]) -> Any:
        """Take ``cost`` from the shared bucket, then run the handler (else RateLimitedError)."""
        if not await self._take_shared(identity, cost):
            raise RateLimitedError("too many requests from this identity")
        outcome = run()
        if type(outcome) is CoroutineType:
            outcome = await outcome
        return outcome

    def _route(
        self, request: Request, connection: ConnectionState, reserve_answer: ReserveAnswer | None
    ) -> Any:
        """The handler's outcome: a result, or a coroutine that returns one."""
        call_type = type(request.call)
        if self.shutting_down:
            raise UnavailableError("the server is shutting down")
        cost = call_cost(request.call)
        peer = connection.peer
        key = UNKNOWN_ADDRESS_KEY if peer is None else address_key(peer.host)
        if not self._by_address.allow(key, cost):
            raise RateLimitedError("too many requests from this address")
        access = ACCESS[call_type]
        if access is Access.PEER:
            # Spoken between two clients (qpq-p2p); a server has no part in it.
            raise UnsupportedCallError(f"{call_type.__name__} is a call between peers")
        if access is not Access.PUBLIC:
            self._check_token(request.token)
        if call_type in _LOOKUPS and not self._tokens:
            # Without a token, strangers would read who is registered and
            # where they can be reached: lookups need an account instead.
            _check_account(connection)
        ctx = CallContext(app=self.app, connection=connection)
        if reserve_answer is not None:
            ctx.reserve_answer = reserve_answer
        handler = HANDLERS[call_type]
        if access is Access.IDENTITY:
            identity = ctx.identity()
            account = connection.account
            if account is None and call_type is not RegisterUser:
                raise ForbiddenError(NO_ACCOUNT)
            if account is not None and not account.active:
                raise refusal(account)
            ctx.charge = functools.partial(self._charge, identity)
            if not self._allow_identity(identity, cost):
                if self._shared is None:
                    raise RateLimitedError("too many requests from this identity")
                return self._admit_then(
                    identity, cost, functools.partial(handler, ctx, request.call)
                )
        return handler(ctx, request.call)

    def start(
        self,
        request: Request,
        connection: ConnectionState,
        reserve_answer: ReserveAnswer | None = None,
    ) -> Answer | PendingAnswer:
        """The answer to ``request`` if it is ready now, else the call still waiting.

        A call whose checks fail, or whose handler needs no waiting, is
        answered right here, so the transport can send the answer in the
        same event-loop turn; only a call that waits costs a task.
        ``reserve_answer`` is how a handler holds room for its answer (the
        transport's; :class:`~qpq_server._context.CallContext`).
        """
        name = type(request.call).__name__
        started = time.perf_counter()
        calls = self._calls.get(name)
        if calls is None:
            calls = self._calls[name] = self.metrics.calls.labels(name)
        calls.inc()
        try:
            outcome = self._route(request, connection, reserve_answer)
        except Exception as error:  # noqa: BLE001 - finish() maps it to a coded answer
            return self.finish(name, started, error)
        if type(outcome) is CoroutineType:
            return PendingAnswer(self, name, started, outcome)
        return self.finish(name, started, outcome)

    async def bill_answer(self, connection: ConnectionState, size: int) -> None:
        """Charge the connection's identity for an answer of ``size`` bytes, once sent.

        Beyond the call's first token, one per ``ANSWER_BYTES_PER_TOKEN``
        (:mod:`qpq_server._answers`); billed after the fact, never refused.
        Answers of calls without an identity are small and cost nothing more.
        """
        tokens = answer_tokens(size)
        if tokens and connection.identity is not None:
            await self._charge(connection.identity, tokens, done=True)

    def finish(self, name: str, started: float, outcome: Outcome) -> Answer:
        """The answer for a call's outcome, with its latency and error counted.

        A ServiceError becomes its coded ErrorResponse; any other exception is a
        handler bug, logged (type and place, no data) and answered InternalError.
        """
        answer: Answer
        if isinstance(outcome, ServiceError):
            self._count_error(name, outcome.code.name.lower())
            answer = ErrorResponse.from_exception(outcome)
        elif isinstance(outcome, Exception):
            self._count_error(name, "internal")
            # exc_info from the error itself: this also runs outside its except block.
            _log.error(
                "call failed unexpectedly",
                exc_info=(type(outcome), outcome, outcome.__traceback__),
                extra={"fields": {"call": name}},
            )
            answer = ErrorResponse.from_exception(InternalError("the server failed internally"))
        else:
            answer = outcome
        latency = self._latency.get(name)
        if latency is None:
            latency = self._latency[name] = self.metrics.latency.labels(name)
        latency.observe(time.perf_counter() - started)
        return answer

    def _count_error(self, name: str, code: str) -> None:
        errors = self._errors.get((name, code))
        if errors is None:
            errors = self._errors[(name, code)] = self.metrics.errors.labels(name, code)
        errors.inc()
