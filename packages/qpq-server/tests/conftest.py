"""Shared fixtures: one real server process per test module where tests do not interfere."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import qpq_core
from qpq_server.testing import RunningServer, ServerProcess

#: Limits for the shared server: a small queue to reach a gap notice, no rate limit in the way.
SHARED_ENV = {
    "QPQ_QUEUE_DEPTH": "20",
    "QPQ_RATE_PER_SECOND": "100000",
    "QPQ_RATE_BURST": "100000",
    "QPQ_MAX_FETCH_WAIT_MS": "30000",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with ServerProcess(tmp_path_factory.mktemp("server"), extra_env=SHARED_ENV) as running:
        yield running


@pytest.fixture
def identity() -> qpq_core.Identity:
    return qpq_core.Identity.generate()
