"""What a handler gets: the server's shared parts and its connection's state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from qpq_proto import Endpoint, Limits
from qpq_proto.errors import ForbiddenError, UnauthenticatedError
from qpq_server._account_limits import AccountLimits
from qpq_server._accounts import AccountState
from qpq_server._config import ServerConfig
from qpq_server._group_states import GroupStates
from qpq_server._metrics import Metrics
from qpq_server._notifier import DeliveryNotifier
from qpq_server._storage import Storage

__all__ = [
    "NO_ACCOUNT",
    "UNKNOWN_ADDRESS_KEY",
    "App",
    "CallContext",
    "Clock",
    "ConnectionState",
    "ReserveAnswer",
    "StorageProbe",
]

#: The one per-address bucket every connection without a known address shares:
#: not knowing who sends must not mean no limit.
UNKNOWN_ADDRESS_KEY = "unknown-address"
#: The refusal of an identity call from an identity that registered no account.
NO_ACCOUNT = "this identity has no account on this server: register first (RegisterUser)"


@dataclass(frozen=True, slots=True)
class Clock:
    """Time sources, injected so tests can move time without waiting."""

    def wall_ms(self) -> int:
        """Unix time in milliseconds."""
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        return time.monotonic()


@dataclass(slots=True)
class ConnectionState:
    """Per-connection auth state. The nonce is single-use; the identity is proven.

    ``account``: the account the proven identity acts for, read when it
    authenticated (None until it registers one); its status is updated when
    the server learns that it changed (suspended, deleted), and every call
    but RegisterUser needs it active.
    """

    peer: Endpoint | None
    nonce: bytes | None = field(default=None, repr=False)
    identity: bytes | None = None
    account: AccountState | None = None

    @property
    def admitted(self) -> bool:
        """True once the connection acts for an active account."""
        return self.identity is not None and self.account is not None and self.account.active


@dataclass(slots=True)
class StorageProbe:
    """The last storage check Health ran: its status and when it started (monotonic s)."""

    status: str = ""
    started_at: float = float("-inf")


@dataclass(slots=True)
class App:
    """The server's shared parts, built once at startup."""

    config: ServerConfig
    storage: Storage
    notifier: DeliveryNotifier
    clock: Clock
    version: str
    started_at: float
    #: Health reuses a recent storage check instead of probing on every call.
    storage_probe: StorageProbe = field(default_factory=StorageProbe)
    #: What handlers count beyond calls and errors (the dispatcher counts those).
    metrics: Metrics = field(default_factory=Metrics)
    #: The verified state of groups, cached, one writer per group.
    groups: GroupStates = field(init=False)
    #: Per-account and per-address limits that live outside a call's transaction.
    accounts: AccountLimits = field(init=False)

    def __post_init__(self) -> None:
        self.groups = GroupStates(self.storage)
        self.accounts = AccountLimits(self.config, self.storage.rate_buckets, self.clock.monotonic)

    @property
    def limits(self) -> Limits:
        return self.config.limits


class Charge(Protocol):
    """Spend rate-limit tokens of the caller (see :class:`CallContext`)."""

    async def __call__(self, tokens: float, *, done: bool = False) -> None: ...


async def _free(tokens: float, *, done: bool = False) -> None:
    """No rate limiter (in-process tests that build a context by hand)."""


class ReserveAnswer(Protocol):
    """Hold room for ``size`` bytes of the call's answer (see :class:`CallContext`)."""

    async def __call__(self, size: int) -> None: ...


async def _unbounded(size: int) -> None:
    """No transport (in-process tests that call the dispatcher directly)."""


@dataclass(slots=True)
class CallContext:
    """One call: the app and the connection it arrived on.

    ``await charge(tokens)`` spends more of the caller's rate-limit budget once a
    handler knows what the call costs (a fan-out's width); it raises
    RateLimitedError when the budget cannot pay. ``await charge(tokens, done=True)``
    bills work already done and never raises (the budget goes into debt).

    ``await reserve_answer(size)`` sets the room held for the call's answer to
    ``size`` bytes, waiting until the connection's answer window and the
    server's answer budget have it: a handler that waits long (FetchWait)
    holds little meanwhile and reserves a whole message before it reads.
    """

    app: App
    connection: ConnectionState
    charge: Charge = _free
    reserve_answer: ReserveAnswer = _unbounded

    def identity(self) -> bytes:
        """The proven identity key; UnauthenticatedError if there is none."""
        if self.connection.identity is None:
            raise UnauthenticatedError(
                "this call needs a proven identity: Challenge, then Authenticate"
            )
        return self.connection.identity

    def account(self) -> bytes:
        """The key of the account the proven identity acts for.

        ForbiddenError when it has none (it must register first); the
        dispatcher refuses a call of an account that is not active before
        its handler runs.
        """
        self.identity()
        if self.connection.account is None:
            raise ForbiddenError(NO_ACCOUNT)
        return self.connection.account.account_key
