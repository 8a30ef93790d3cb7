"""Fixtures: a real qpq server subprocess, in-process library clients, and
people driving the real `qpq` command.

Most flows run on the library (``make_client``) against one server per
module: that is where the logic lives, and a process per step would test
the interpreter's start-up more than the messenger. The ``qpq`` command is
exercised by a few smoke tests (``make_user``) that prove its wiring;
test_cli_coverage.py checks that every command runs somewhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import ipaddress
import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qpq_client import Client, HistoryEntry, ServerAddress, Trust
from qpq_server.testing import RunningServer, start_server

_T = TypeVar("_T")
_serial = itertools.count(1)
#: The state passphrase of library clients; distinctive, so a leak is found.
PASSPHRASE = "library-test-passphrase-0451"
#: Every client here connects from 127.0.0.1, as if a whole office sat
#: behind one address: the per-address limit (tested in qpq-server) is
#: lifted so that fast tests do not trip it.
NO_RATE_LIMIT = {
    "QPQ_RATE_PER_SECOND": "100000",
    "QPQ_RATE_BURST": "100000",
    # Tests claim directories dry; the claim limits have tests of their own.
    "QPQ_KEY_PACKAGE_CLAIM_BURST": "100000",
    "QPQ_KEY_PACKAGE_CLAIMS_PER_CLAIMER_PER_DAY": "100000",
}


def qpq_command() -> list[str]:
    """The installed `qpq` next to this interpreter, else the module."""
    beside = Path(sys.executable).parent / "qpq"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("qpq")
    return [found] if found else [sys.executable, "-m", "qpq_client.cli"]


def unique_name(name: str) -> str:
    """``name`` with a suffix no other test on the server uses (``erin-12``)."""
    return f"{name}-{next(_serial)}"


def self_signed_ca(path: Path) -> Path:
    """A CA certificate that did not issue the server's (same names, other key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qpq-server development")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def run_in_own_loop(work: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``work`` on an event loop of its own, in a thread (the caller may be in a loop)."""

    async def main() -> _T:
        return await work()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


async def create_profile(
    home: Path, passphrase: str, username: str, server: RunningServer
) -> Client:
    """What `qpq init` does, in process: a registered identity with KeyPackages, connected."""
    return await Client.create(
        home,
        passphrase,
        username,
        server=ServerAddress(server.host, server.port),
        trust=Trust(pin=server.fingerprint),
        token=server.token,
    )


def identity_seed(home: Path, passphrase: str) -> bytes:
    """The secret seed of a profile's identity key (what must never leak)."""

    async def read() -> bytes:
        client = Client.open(home, passphrase)
        try:
            return client._identity.secret_bytes()  # the secret itself, to search for it
        finally:
            await client.close()

    return run_in_own_loop(read)


# ---- what a person sees -------------------------------------------------------


#: When an entry was sent, as `qpq recv` and `qpq history` start its line.
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d ")


def unstamped(lines: Iterable[str]) -> list[str]:
    """Lines `qpq recv` printed, each checked to start with its time, without it.

    Continuation lines of a multi-line message (indented) carry no time.
    """
    bare = []
    for line in lines:
        if line.startswith("    "):
            bare.append(line)
            continue
        stamp = STAMP.match(line)
        assert stamp is not None, f"no time in {line!r}"
        bare.append(line[stamp.end() :])
    return bare


def seen(entries: Iterable[HistoryEntry]) -> list[str]:
    """Entries in the shape `qpq recv` prints them: ``[group] sender: text``,
    ``[group] * event``; an invitation waiting as a request is ``[group] ? ...``."""
    mark = {"event": "* ", "request": "? "}
    return [
        f"[{e.group}] {mark[e.kind]}{e.body}"
        if e.kind in mark
        else f"[{e.group}] {e.sender}: {e.body}"
        for e in entries
    ]


async def receive_until(
    client: Client, *expected: str, wait: float = 10.0, attempts: int = 6
) -> list[str]:
    """Receive until every expected substring was seen (each receive returns on arrival)."""
    got: list[str] = []
    for _ in range(attempts):
        got += seen(await client.receive(wait=wait))
        if all(any(e in line for line in got) for e in expected):
            return got
    raise AssertionError(f"{client.username} never saw {expected}; saw {got}")


def listed(client: Client) -> list[str]:
    """The groups as `qpq group list` prints them: ``name (state): members``."""
    return [
        f"{g.name}{'' if g.status == 'active' else f' ({g.status})'}: {', '.join(g.members)}"
        for g in client.groups()
    ]


# ---- people at a terminal -------------------------------------------------------


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

    def recv_until(self, *expected: str, wait: float = 10.0, attempts: int = 6) -> list[str]:
        """`qpq recv --wait` until every expected substring was printed (no sleeps)."""
        seen: list[str] = []
        for _ in range(attempts):
            seen += unstamped(self.run("recv", "--wait", str(wait)).lines)
            if all(any(e in line for line in seen) for e in expected):
                return seen
        raise AssertionError(f"{self.name} never saw {expected}; saw {seen}")

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Client]:
        """This person's profile opened in process and connected, as the next `qpq` would."""
        client = Client.open(self.home, self.passphrase)
        try:
            await client.connect()
            yield client
        finally:
            await client.close()

    def library(self, work: Callable[[Client], Awaitable[_T]]) -> _T:
        """Run one step in process on this profile (set-up the test is not about)."""

        async def step() -> _T:
            async with self.client() as client:
                return await work(client)

        return run_in_own_loop(step)


MakeUser = Callable[[str], User]


def group_of_two(alice: User, bob: User, group: str, *, attempts: int = 6) -> None:
    """Alice's group with bob in it, joined (set-up through the library)."""
    bob.library(lambda client: client.add_contact(alice.name))

    async def make(client: Client) -> None:
        await client.create_group(group)
        await client.invite(group, [bob.name])

    alice.library(make)

    async def joined(client: Client) -> None:
        for _ in range(attempts):
            if any(g.name == group for g in client.groups()):
                return
            await client.receive(wait=10)
        raise AssertionError(f"{bob.name} never joined {group}")

    bob.library(joined)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for a module whose tests use distinct usernames and groups."""
    running = start_server(tmp_path_factory.mktemp("shared-server"), extra_env=NO_RATE_LIMIT)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A server of this test's own: for a test that stops, restarts or reconfigures it."""
    data = tmp_path / "server"
    data.mkdir()
    running = start_server(data, extra_env=NO_RATE_LIMIT)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def make_user(shared_server: RunningServer, tmp_path: Path) -> MakeUser:
    """People for `qpq`, registered on the module's server as `qpq init` would, in process.

    Usernames get a per-test suffix (``alice-7``); ``User.name`` is the full name.
    """
    suffix = next(_serial)

    def make(name: str) -> User:
        user = User(f"{name}-{suffix}", tmp_path / "homes" / name, shared_server)

        async def init() -> None:
            created = await create_profile(user.home, user.passphrase, user.name, shared_server)
            await created.close()

        run_in_own_loop(init)
        return user

    return make


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
        client = await create_profile(
            tmp_path / name, PASSPHRASE, f"{name}-{suffix}", shared_server
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
