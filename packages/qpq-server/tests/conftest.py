"""Shared fixtures: one real server process per test module where tests do not interfere;
one real PostgreSQL cluster per session for the tests that run over both backends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import qpq_core
from qpq_server._postgres import PostgresStorage
from qpq_server._sqlcipher import SqlCipherStorage
from qpq_server.testing import PostgresCluster, RunningServer, ServerProcess

#: The backends the storage tests and the shared server run over.
BACKENDS = ("sqlcipher", "postgresql")
#: Limits for the shared server: a small queue to reach a gap notice, no rate
#: limit in the way (KeyPackage claim limits neither: test_key_package_claims
#: runs servers of its own).
SHARED_ENV = {
    "QPQ_QUEUE_DEPTH": "20",
    "QPQ_RATE_PER_SECOND": "100000",
    "QPQ_RATE_BURST": "100000",
    "QPQ_KEY_PACKAGE_CLAIM_BURST": "100000",
    "QPQ_KEY_PACKAGE_CLAIMS_PER_CLAIMER_PER_DAY": "100000",
    "QPQ_MAX_FETCH_WAIT_MS": "30000",
}


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The module's shared server, on each backend in turn (PostgreSQL: a schema of its own)."""
    env = dict(SHARED_ENV)
    if request.param == "postgresql":
        cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
        env["QPQ_DATABASE_URL"] = cluster.schema_url()
    with ServerProcess(tmp_path_factory.mktemp("server"), extra_env=env) as running:
        yield running


@pytest.fixture
def identity() -> qpq_core.Identity:
    return qpq_core.Identity.generate()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL server for the session; missing PostgreSQL programs fail, never skip."""
    try:
        cluster = PostgresCluster()
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> str:
    """An empty database of this test's own (a schema in the session's cluster)."""
    return pg_cluster.schema_url()


#: Opens the test's store; keyword arguments go to the backend's ``open``.
OpenStore = Callable[..., Awaitable[Any]]


@pytest.fixture(params=BACKENDS)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStore:
    """Opens this test's store (each call the same database) on each backend in turn."""
    if request.param == "sqlcipher":

        async def open_sqlcipher(**options: Any) -> SqlCipherStorage:
            # A key with quotes: PRAGMA key takes no parameters, it is quoted by hand.
            return await SqlCipherStorage.open(tmp_path / "qpq.db", "k3y'with\"quotes", **options)

        return open_sqlcipher
    url = request.getfixturevalue("pg_url")

    async def open_postgres(**options: Any) -> PostgresStorage:
        return await PostgresStorage.open(url, **options)

    return open_postgres
