"""Fixtures: a real qpq server subprocess, users driving the real `qpq` command,
and in-process library clients."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qpq_client import Client, ServerAddress, Trust
from qpq_server.testing import RunningServer, start_server

_serial = itertools.count(1)
#: The state passphrase of library clients; distinctive, so a leak is found.
PASSPHRASE = "library-test-passphrase-0451"


def qpq_command() -> list[str]:
    """The installed `qpq` next to this interpreter, else the module."""
    beside = Path(sys.executable).parent / "qpq"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("qpq")
    return [found] if found else [sys.executable, "-m", "qpq_client.cli"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


@dataclass
class User:
    """One person with their own QPQ_HOME, running `qpq` subprocesses."""

    name: str
    home: Path
    server: RunningServer
    passphrase: str = "correct horse"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QPQ_")}
        env.update(
            QPQ_HOME=str(self.home),
            QPQ_STATE_KEY=self.passphrase,
            QPQ_SERVER=f"{self.server.host}:{self.server.port}",
            QPQ_PIN=self.server.fingerprint,
        )
        env.update(extra)
        return env

    def run(
        self, *args: str, check: bool = True, input_text: str | None = None, **env: str
    ) -> Result:
        done = subprocess.run(
            [*qpq_command(), *args],
            env=self.env(**env),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        result = Result(done.returncode, done.stdout, done.stderr)
        if check and done.returncode != 0:
            raise AssertionError(f"{self.name}: qpq {' '.join(args)} failed:\n{done.stderr}")
        return result

    def init(self) -> Result:
        return self.run("init", "--username", self.name, QPQ_TOKEN=self.server.token)

    def add_contacts(self, *names: str) -> Result:
        """Make ``names`` contacts, so that their invitations are joined, not held."""
        return self.run("contacts", "add", *names)

    def recv_until(self, *expected: str, wait: float = 10.0, attempts: int = 6) -> list[str]:
        """`qpq recv --wait` until every expected substring was printed (no sleeps)."""
        seen: list[str] = []
        for _ in range(attempts):
            seen += self.run("recv", "--wait", str(wait)).lines
            if all(any(e in line for line in seen) for e in expected):
                return seen
        raise AssertionError(f"{self.name} never saw {expected}; saw {seen}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    data = tmp_path / "server"
    data.mkdir()
    running = start_server(data)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def make_user(tmp_path: Path, server: RunningServer):  # type: ignore[no-untyped-def]
    def make(name: str) -> User:
        user = User(name, tmp_path / "homes" / name, server)
        user.init()
        return user

    return make


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for a module whose tests use distinct usernames and groups."""
    running = start_server(tmp_path_factory.mktemp("shared-server"))
    try:
        yield running
    finally:
        running.stop()


MakeClient = Callable[[str], Awaitable[Client]]


@pytest.fixture
async def make_client(shared_server: RunningServer, tmp_path: Path) -> AsyncIterator[MakeClient]:
    """Create in-process library clients on the shared server; close them after the test.

    Usernames get a per-test suffix (``alice-7``) so tests sharing the server
    never collide.
    """
    clients: list[Client] = []
    suffix = next(_serial)

    async def make(name: str) -> Client:
        client = await Client.create(
            tmp_path / name,
            PASSPHRASE,
            f"{name}-{suffix}",
            server=ServerAddress(shared_server.host, shared_server.port),
            trust=Trust(pin=shared_server.fingerprint),
            token=shared_server.token,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()


@contextlib.contextmanager
def lagging(client: Client) -> Iterator[list[BaseException | None]]:
    """Hold back what the server queued for ``client`` until its next publish.

    Makes "another member's commit is still on its way to us when we act"
    deterministic: fetches come back empty until this client has published.
    Yields the outcome of each publish meanwhile (None, or what it raised).
    """
    conn: Any = client._session.conn  # fault injection on a private attribute
    real_fetch, real_publish = conn.fetch, conn.publish
    outcomes: list[BaseException | None] = []

    async def fetch(limit: int) -> tuple[Any, ...]:
        return await real_fetch(limit) if outcomes else ()

    async def publish(*args: Any, **kwargs: Any) -> Any:
        try:
            published = await real_publish(*args, **kwargs)
        except BaseException as error:
            outcomes.append(error)
            raise
        outcomes.append(None)
        return published

    conn.fetch, conn.publish = fetch, publish
    try:
        yield outcomes
    finally:
        del conn.fetch, conn.publish
