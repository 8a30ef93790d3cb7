"""Dispatcher behaviour that needs no network: handler crashes, log hygiene, Health."""

from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path
from typing import Any

from server_helpers import answer_of, proven

from qpq_proto import (
    ACCESS,
    DEFAULT_LIMITS,
    Access,
    Challenge,
    Endpoint,
    ErrorCode,
    ErrorResponse,
    Fetch,
    Health,
    HealthStatus,
    Request,
)
from qpq_server._config import ServerConfig
from qpq_server._context import App, Clock, ConnectionState
from qpq_server._dispatch import Dispatcher
from qpq_server._handlers import HANDLERS
from qpq_server._handlers.health import STORAGE_PROBE_SECONDS
from qpq_server._logging import configure_logging
from qpq_server._metrics import Metrics
from qpq_server._notifier import DeliveryNotifier

SECRET_PAYLOAD = "payload-secret-4242"


def test_every_call_has_a_handler_and_an_access_rule() -> None:
    # Peer calls are between clients: the server has no handler for them.
    assert set(HANDLERS) == {call for call, access in ACCESS.items() if access is not Access.PEER}


class BrokenStorage:
    backend = "broken"
    rate_buckets = None

    def __getattr__(self, name: str) -> Any:
        async def fail(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError(f"boom with {SECRET_PAYLOAD}")

        return fail


async def test_handler_crash_is_internal_error_without_details(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", stream)
    config = ServerConfig(auth_token="tok", data_dir=tmp_path)
    app = App(
        config=config,
        storage=BrokenStorage(),  # type: ignore[arg-type]
        notifier=DeliveryNotifier(),
        clock=Clock(),
        version="test",
        started_at=0.0,
    )
    dispatcher = Dispatcher(app, Metrics())
    connection = proven(b"i" * 32)
    answer = await answer_of(dispatcher, Request(call=Fetch(limit=1), token="tok"), connection)
    assert isinstance(answer, ErrorResponse)
    assert answer.code is ErrorCode.INTERNAL
    assert SECRET_PAYLOAD not in answer.message
    log = stream.getvalue()
    assert '"error": "RuntimeError"' in log
    assert SECRET_PAYLOAD not in log
    # The dispatcher keeps working.
    answer = await answer_of(dispatcher, Request(call=Fetch(limit=1), token="bad"), connection)
    assert isinstance(answer, ErrorResponse)
    assert answer.code is ErrorCode.UNAUTHENTICATED
    logging.getLogger("qpq_server").handlers.clear()


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def wall_ms(self) -> int:
        return 1_700_000_000_000

    def monotonic(self) -> float:
        return self.now


class SwitchableStorage:
    backend = "switchable"
    rate_buckets = None

    def __init__(self) -> None:
        self.status = "ok"
        self.checks = 0

    async def check(self) -> str:
        self.checks += 1
        return self.status


async def test_health_reports_a_broken_store_within_the_probe_interval(tmp_path: Path) -> None:
    clock = ManualClock()
    storage = SwitchableStorage()
    app = App(
        config=ServerConfig(auth_token="tok", data_dir=tmp_path),
        storage=storage,  # type: ignore[arg-type]
        notifier=DeliveryNotifier(),
        clock=clock,  # type: ignore[arg-type]
        version="test",
        started_at=0.0,
    )
    dispatcher = Dispatcher(app, Metrics())
    connection = ConnectionState(peer=None)

    async def health() -> HealthStatus:
        answer = await answer_of(dispatcher, Request(call=Health()), connection)
        assert isinstance(answer, HealthStatus)
        return answer

    assert (await health()).status == "ok"
    assert storage.checks == 1
    # Within the interval Health reuses the check, and answers without waiting.
    storage.status = "unavailable: DatabaseError"
    clock.now += STORAGE_PROBE_SECONDS / 2
    assert (await health()).status == "ok"
    assert isinstance(dispatcher.start(Request(call=Health()), connection), HealthStatus)
    assert storage.checks == 1
    # Once the interval has passed since the check started, the broken store shows.
    clock.now += STORAGE_PROBE_SECONDS / 2
    status = await health()
    assert (status.status, status.storage) == ("degraded", "unavailable: DatabaseError")
    assert storage.checks == 2
    # And recovery shows the same way.
    storage.status = "ok"
    clock.now += STORAGE_PROBE_SECONDS
    assert (await health()).status == "ok"


async def test_connections_without_a_known_address_share_one_rate_limit(tmp_path: Path) -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS, rate_per_second=0.001, rate_burst=3)
    app = App(
        config=ServerConfig(auth_token="tok", data_dir=tmp_path, limits=limits),
        storage=BrokenStorage(),  # type: ignore[arg-type]
        notifier=DeliveryNotifier(),
        clock=ManualClock(),  # type: ignore[arg-type]
        version="test",
        started_at=0.0,
    )
    dispatcher = Dispatcher(app, Metrics())
    # A wrong token is checked after the per-address limit: it costs no storage.
    request = Request(call=Challenge(), token="wrong")
    codes = []
    for _ in range(5):  # a fresh connection each time: the bucket is not per connection
        answer = await answer_of(dispatcher, request, ConnectionState(peer=None))
        assert isinstance(answer, ErrorResponse)
        codes.append(answer.code)
    assert codes == [ErrorCode.UNAUTHENTICATED] * 3 + [ErrorCode.RATE_LIMITED] * 2
    # A known address has its own bucket.
    known = ConnectionState(peer=Endpoint(host="192.0.2.7", port=4433))
    answer = await answer_of(dispatcher, request, known)
    assert isinstance(answer, ErrorResponse)
    assert answer.code is ErrorCode.UNAUTHENTICATED
