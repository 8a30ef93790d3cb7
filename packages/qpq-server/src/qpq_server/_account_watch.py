"""Close the connections of accounts that stop being active, within seconds, on every node.

An account is suspended or deleted by another process (``qpq-server
accounts`` on the server host, another node) or by a call on this node;
each such change moves the database's ``account_version`` counter in the
same transaction. Every node polls the counter (one small read every
:data:`POLL_SECONDS`); when it moved, the node reads which identities'
accounts changed and closes their connections with the reason, after
marking them so that a call still arriving on one is refused
(``forbidden``). A new connection of such an identity is refused when it
authenticates. A deletion also queued notices for the members of the
account's groups, which a process other than this node stored: every
waiting fetchWait and subscribe is woken to read its queue again.
"""

from __future__ import annotations

import asyncio

from qpq_proto.quic import CloseCode
from qpq_server._accounts import AccountState, Status, StatusChange
from qpq_server._logging import get_logger, short_key
from qpq_server._metrics import Metrics
from qpq_server._notifier import DeliveryNotifier
from qpq_server._ops_accounts import refusal
from qpq_server._storage import Storage
from qpq_server._transport import TransportHub

__all__ = ["POLL_SECONDS", "AccountWatch"]

_log = get_logger("accounts")
#: How often each node reads the account status counter.
POLL_SECONDS = 1.0


class AccountWatch:
    """One node's poll of the account status counter (see the module docstring)."""

    def __init__(
        self,
        storage: Storage,
        hub: TransportHub,
        notifier: DeliveryNotifier,
        metrics: Metrics,
        *,
        interval: float = POLL_SECONDS,
    ) -> None:
        self._storage = storage
        self._hub = hub
        self._notifier = notifier
        self._metrics = metrics
        self._interval = interval
        self._version: int | None = None

    async def start(self) -> None:
        """Read the counter as it is now: changes from here on are acted upon."""
        self._version = await self._storage.account_version()

    async def run(self) -> None:
        """Poll until cancelled; a failed read is logged and tried again."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next poll tries again
                _log.exception("reading account changes failed; will retry")

    async def poll(self) -> int:
        """Act on the changes since the last poll; how many connections were closed."""
        current = await self._storage.account_version()
        if self._version is None:
            self._version = current
            return 0
        if current == self._version:
            return 0
        changes = await self._storage.status_changes(self._version)
        # Changes committed after ``current`` was read come again next time:
        # acting on one twice closes nothing more.
        self._version = current
        counts = await self._storage.account_counts()
        self._metrics.observe_accounts({status.value: n for status, n in counts.items()})
        return self.apply(changes)

    def apply(self, changes: list[StatusChange]) -> int:
        """Mark and close the connections of identities whose account is no longer active."""
        latest = {change.identity_key: change for change in changes}
        closed = 0
        for protocol in list(self._hub.protocols):
            state = protocol.connection
            change = None if state.identity is None else latest.get(state.identity)
            if change is None:
                continue
            account_key = state.identity if state.account is None else state.account.account_key
            if account_key is None:
                continue
            state.account = AccountState(account_key, change.status, change.reason)
            if change.status is Status.ACTIVE:
                continue
            protocol.close_with_reason(CloseCode.UNAUTHENTICATED, refusal(state.account).message)
            self._metrics.account_closures.labels(change.status.value).inc()
            closed += 1
        for change in latest.values():
            if change.status is not Status.ACTIVE:
                fields = {"identity": short_key(change.identity_key), "status": change.status}
                _log.info("account no longer active", extra={"fields": fields})
        if any(change.status is Status.DELETED for change in latest.values()):
            # Its deletion notices may have been stored by another process.
            self._notifier.notify_all()
        return closed
