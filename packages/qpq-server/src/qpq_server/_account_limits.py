"""Limits on accounts that are checked before a call's transaction.

- **Messages per hour** (``account_messages_per_hour``): every Publish of
  an account's identities pays one token from the account's bucket, which
  holds that many and refills over an hour. Where nodes share a PostgreSQL
  database the bucket is a row of ``rate_limits`` (key ``M`` and the account
  key), spent through leases as the per-identity rate limit is
  (:class:`~qpq_server._ratelimit.SharedRateLimiter`), so it holds across
  nodes; on SQLCipher the one server process keeps it in memory.
- **Registrations per source address** in ``open`` mode
  (``registrations_per_address_per_hour``): a bucket per address (IPv6: per
  /64) in this node's memory, like the other per-address limits.

The limits that are checked inside a call's own transaction (KeyPackage
claims per account, invitations to strangers, queued bytes, groups
created) live with the storage operations they guard.
"""

from __future__ import annotations

from collections.abc import Callable

from qpq_proto.errors import RateLimitedError
from qpq_server._config import ServerConfig
from qpq_server._ratelimit import RateBuckets, RateLimiter, SharedRateLimiter

__all__ = ["AccountLimits"]

_HOUR_S = 3600.0


class AccountLimits:
    """The per-account and per-address limits of one node (see the module docstring).

    Args:
        config: the server's settings.
        buckets: the database's shared buckets (PostgreSQL), or None.
        clock: monotonic seconds.
    """

    def __init__(
        self, config: ServerConfig, buckets: RateBuckets | None, clock: Callable[[], float]
    ) -> None:
        per_hour = config.account_messages_per_hour
        self._per_hour = per_hour
        burst = max(1, int(per_hour))
        self._messages_local = RateLimiter(per_hour / _HOUR_S, burst, clock)
        self._messages_shared = (
            None
            if buckets is None
            else SharedRateLimiter(buckets, per_hour / _HOUR_S, burst, clock)
        )
        registrations = config.registrations_per_address_per_hour
        self._registrations = RateLimiter(
            registrations / _HOUR_S, max(1, int(registrations)), clock
        )

    def admit_registration(self, address: str) -> bool:
        """Spend one registration of ``address``'s bucket; False when it is empty."""
        return self._registrations.allow(address)

    async def charge_message(self, account_key: bytes) -> None:
        """Spend one of the account's messages of the hour.

        Raises:
            RateLimitedError: with ``field`` ``account``: the account sent as
                many as it may for now (retrying soon will not help).
        """
        key = b"M" + account_key
        shared = self._messages_shared
        if shared is None:
            admitted = self._messages_local.allow(key)
        else:
            admitted = shared.allow(key) or await shared.take(key)
        if not admitted:
            raise RateLimitedError(
                f"this account sent as many messages as it may in an hour "
                f"({self._per_hour:g}); try again later",
                field="account",
            )
