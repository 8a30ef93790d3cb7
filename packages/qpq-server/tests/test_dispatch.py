"""Dispatcher behaviour that needs no network: handler crashes and log hygiene."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

from qpq_proto import ErrorCode, ErrorResponse, Fetch, Request
from qpq_server._config import ServerConfig
from qpq_server._context import App, Clock, ConnectionState
from qpq_server._dispatch import Dispatcher
from qpq_server._logging import configure_logging
from qpq_server._metrics import Metrics
from qpq_server._mls import CoreMlsChecks
from qpq_server._notifier import DeliveryNotifier

SECRET_PAYLOAD = "payload-secret-4242"


class BrokenStorage:
    backend = "broken"

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
        mls=CoreMlsChecks(),
        notifier=DeliveryNotifier(),
        clock=Clock(),
        version="test",
        started_at=0.0,
    )
    dispatcher = Dispatcher(app, Metrics())
    connection = ConnectionState(peer=None, identity=b"i" * 32)
    answer = await dispatcher.dispatch(Request(call=Fetch(limit=1), token="tok"), connection)
    assert isinstance(answer, ErrorResponse)
    assert answer.code is ErrorCode.INTERNAL
    assert SECRET_PAYLOAD not in answer.message
    log = stream.getvalue()
    assert '"error": "RuntimeError"' in log
    assert SECRET_PAYLOAD not in log
    # The dispatcher keeps working.
    answer = await dispatcher.dispatch(Request(call=Fetch(limit=1), token="bad"), connection)
    assert isinstance(answer, ErrorResponse)
    assert answer.code is ErrorCode.UNAUTHENTICATED
    logging.getLogger("qpq_server").handlers.clear()
