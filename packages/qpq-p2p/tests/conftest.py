"""Shared fixtures of the p2p tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qpq_server.testing import RunningServer, ServerProcess

#: No rate limit in the way of the tests' bursts.
SERVER_ENV = {"QPQ_RATE_PER_SECOND": "100000", "QPQ_RATE_BURST": "100000"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real ``qpq-server`` process on 127.0.0.1, shared by one module's tests."""
    with ServerProcess(tmp_path_factory.mktemp("server"), extra_env=SERVER_ENV) as running:
        yield running
