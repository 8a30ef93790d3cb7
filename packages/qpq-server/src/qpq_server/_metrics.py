"""Prometheus metrics on an optional local HTTP listener (off by default).

Labels are call names and error codes only: never identities or addresses,
which would be both a privacy leak and unbounded cardinality.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from qpq_server._storage import QueueStats

__all__ = ["Metrics"]


class Metrics:
    """The server's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.calls = Counter(
            "qpq_calls", "Calls handled, by call", ["call"], registry=self.registry
        )
        self.errors = Counter(
            "qpq_call_errors",
            "Calls answered with an error, by call and code",
            ["call", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "qpq_call_seconds",
            "Time to answer a call (subscribe: until Subscribed)",
            ["call"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.connections = Gauge("qpq_connections", "Open QUIC connections", registry=self.registry)
        self.waiters = Gauge(
            "qpq_waiters",
            "fetchWait and subscribe calls waiting for messages",
            registry=self.registry,
        )
        self.queues = Gauge("qpq_queues", "Non-empty recipient queues", registry=self.registry)
        self.queued = Gauge("qpq_queued_messages", "Messages queued", registry=self.registry)
        self.max_depth = Gauge(
            "qpq_queue_max_depth", "Depth of the fullest queue", registry=self.registry
        )
        self.bad_streams = Counter(
            "qpq_rejected_streams",
            "Streams rejected before a request was decoded, by code",
            ["code"],
            registry=self.registry,
        )
        self.refused_connections = Counter(
            "qpq_refused_connections",
            "Connections closed on arrival because a connection cap was reached, by cap",
            ["cap"],
            registry=self.registry,
        )
        self.subscribe_stalls = Counter(
            "qpq_subscribe_stalls",
            "Subscribe streams reset because the subscriber took no data in time",
            registry=self.registry,
        )
        self.answer_stalls = Counter(
            "qpq_answer_stalls",
            "Answer streams reset because the client took none of the answer in time",
            registry=self.registry,
        )
        self.cleanup_removed = Counter(
            "qpq_cleanup_removed",
            "Rows the periodic cleanup removed, by kind (messages, key_packages, queues, "
            "groups, endpoints, username_holds, rate_limits)",
            ["kind"],
            registry=self.registry,
        )
        self.group_info_replaced = Counter(
            "qpq_group_info_replaced",
            "GroupInfos a member replaced because the one accepted with a commit did not "
            "match the epoch (its external_pub, which only members can check)",
            registry=self.registry,
        )
        self.registrations = Counter(
            "qpq_registrations",
            "Accounts registered, by registration mode (invite, open)",
            ["registration"],
            registry=self.registry,
        )
        self.invites_used = Counter(
            "qpq_invites_used",
            "Invite codes used by a registration, by registration mode",
            ["registration"],
            registry=self.registry,
        )
        self.accounts = Gauge(
            "qpq_accounts",
            "Accounts by status (active, suspended, deleted), refreshed with the queue totals",
            ["status"],
            registry=self.registry,
        )
        self.accounts_deleted = Counter(
            "qpq_accounts_deleted",
            "Accounts deleted through this node, by who deleted them (owner); the operator's "
            "deletions show in qpq_accounts",
            ["by"],
            registry=self.registry,
        )
        self.account_closures = Counter(
            "qpq_account_closed_connections",
            "Connections closed because their account was suspended or deleted, by status",
            ["status"],
            registry=self.registry,
        )
        self._server: Any = None

    def count_waiters(self, count: Callable[[], int]) -> None:
        """Read ``qpq_waiters`` from ``count`` at every scrape."""
        self.waiters.set_function(count)

    def observe_queues(self, stats: QueueStats) -> None:
        self.queues.set(stats.queues)
        self.queued.set(stats.messages)
        self.max_depth.set(stats.max_depth)

    def observe_accounts(self, counts: Mapping[str, int]) -> None:
        for status, count in counts.items():
            self.accounts.labels(status).set(count)

    def observe_cleanup(self, removed: dict[str, int]) -> None:
        for kind, count in removed.items():
            self.cleanup_removed.labels(kind).inc(count)

    def start_http(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` in a background thread; return the bound port."""
        result = start_http_server(port, addr=host, registry=self.registry)
        self._server = result[0] if isinstance(result, tuple) else None
        if self._server is None:
            return port
        return int(self._server.server_port)

    def stop_http(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
