"""Helpers to run a real qpq server in tests, and to talk to it.

Public and documented so other packages' tests (the client's) use the same
harness::

    from qpq_server.testing import ServerProcess

    def test_something(tmp_path):
        with ServerProcess(tmp_path) as server:       # a real `qpq-server run`
            async with server.connect() as client:    # QUIC, cert pinned
                await client.authenticate(identity)   # Challenge + Authenticate
                result = await client.call(qpq_proto.Fetch(limit=10))

The server runs as a subprocess on ``127.0.0.1`` with port 0 and
``--ready-file``; :func:`start_server` returns once that file appears (a real
event, with a deadline), not after a guessed sleep. Stop it with
:meth:`RunningServer.stop` (SIGTERM) or :meth:`RunningServer.kill` (SIGKILL).

:class:`PostgresCluster` runs a throwaway PostgreSQL server in a temporary
directory, for servers started with ``QPQ_DATABASE_URL``. Debian's
``postgresql`` package provides its programs (found on PATH or in
``/usr/lib/postgresql/*/bin``). initdb refuses to run as root, so as root
the cluster belongs to the ``postgres`` system user that the package
creates (the temporary directory is handed to it); as anyone else it is
the caller's own. It listens on a free port of 127.0.0.1 (its socket
directory is the temporary one) and trusts local connections: it holds
nothing but test data. It runs with ``fsync = off``: it is never stopped
uncleanly (the qpq-server nodes it serves are), so its own durability is
not what a test checks.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from qpq_proto import DEFAULT_LIMITS, Limits
from qpq_server._call_client import CallClient, Signer, harness_username, open_client

__all__ = [
    "TEST_DB_KEY",
    "TEST_REGISTRATIONS_PER_HOUR",
    "TEST_TOKEN",
    "CallClient",
    "PostgresCluster",
    "RunningServer",
    "ServerProcess",
    "ServerStartError",
    "Signer",
    "harness_username",
    "open_client",
    "start_server",
]

#: A token and a db_key that pass the production strength rules (tests only:
#: they are public, like any value written in a repository).
TEST_TOKEN = "uDhgvuBfcGQRUXX4drMf3PxupWGimktljNptxFdLuPA"  # noqa: S105 - test value
TEST_DB_KEY = "Qm7cEw2Ln9xVt4Rj8KpZ3sHd6YbF1gTa5UoNi0WqXe"
#: Open registrations per source address and hour, and renames per account and
#: day, that a test server admits.
TEST_REGISTRATIONS_PER_HOUR = 1_000_000
_POLL_SECONDS = 0.02


class ServerStartError(RuntimeError):
    """The server process exited or did not become ready in time."""

    def __init__(self, message: str, returncode: int | None, log: str) -> None:
        super().__init__(f"{message}\n--- server log ---\n{log}")
        self.returncode = returncode
        self.log = log


@dataclass
class RunningServer:
    """A live ``qpq-server run`` subprocess and what its ready file said."""

    host: str
    port: int
    cert_path: Path
    fingerprint: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    token: str
    log_path: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)
    #: The Prometheus listener's port when ``QPQ_METRICS_LISTEN`` is set.
    metrics_port: int | None = None

    def connect(
        self,
        *,
        token: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
        pin: str | None = None,
    ) -> AbstractAsyncContextManager[CallClient]:
        """Open a client connection, pinned to this server's certificate."""
        return open_client(
            self.host,
            self.port,
            token=self.token if token is None else token,
            pin=pin or self.fingerprint,
            limits=limits,
        )

    def log(self) -> str:
        """Everything the server logged so far."""
        try:
            return self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait for exit; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> int:
        """SIGKILL (a crash), then wait; returns the exit status."""
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait()


def server_command(*args: str) -> list[str]:
    """The argv that runs ``qpq-server`` with this interpreter."""
    return [sys.executable, "-m", "qpq_server", *args]


def server_env(
    data_dir: Path, token: str | None, db_key: str, extra_env: Mapping[str, str] | None
) -> dict[str, str]:
    """A clean environment for a test server: no inherited ``QPQ_*`` settings.

    ``token`` None leaves ``QPQ_AUTH_TOKEN`` unset (for ``QPQ_AUTH_TOKEN_FILE``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("QPQ_")}
    if token is not None:
        env["QPQ_AUTH_TOKEN"] = token
    env.update(
        {
            "QPQ_DATA_DIR": str(data_dir),
            "QPQ_DB_KEY": db_key,
            "QPQ_LOG_LEVEL": "INFO",
            # Every test client registers from 127.0.0.1, and the harness
            # registers a name before a test takes its own: lift open
            # registration's per-address limit and the renames an account
            # may make (a test of either sets its own).
            "QPQ_REGISTRATIONS_PER_ADDRESS_PER_HOUR": str(TEST_REGISTRATIONS_PER_HOUR),
            "QPQ_ACCOUNT_RENAMES_PER_DAY": str(TEST_REGISTRATIONS_PER_HOUR),
        }
    )
    env.update(extra_env or {})
    return env


def start_server(
    tmp_path: Path,
    *,
    token: str | None = TEST_TOKEN,
    db_key: str = TEST_DB_KEY,
    extra_env: Mapping[str, str] | None = None,
    data_dir: Path | None = None,
    listen: str = "127.0.0.1:0",
    timeout: float = 30.0,
) -> RunningServer:
    """Start ``qpq-server run`` and return once it listens.

    Args:
        tmp_path: a private directory for the ready file and the log.
        token, db_key: the server's secrets (test values by default); token
            None leaves ``QPQ_AUTH_TOKEN`` unset (the test sets it another way).
        extra_env: more ``QPQ_*`` settings (limits, production, ...).
        data_dir: reuse a data directory (restart tests); default ``tmp_path/data``.
        listen: where to listen; port 0 picks a free port.

    Raises:
        ServerStartError: the process exited first or did not get ready in time.
    """
    data_dir = data_dir or tmp_path / "data"
    ready = tmp_path / f"ready-{time.monotonic_ns()}.json"
    log_path = tmp_path / f"server-{time.monotonic_ns()}.log"
    env = server_env(data_dir, token, db_key, extra_env)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(  # noqa: S603 - argv built from our own interpreter
            server_command("run", "--listen", listen, "--ready-file", str(ready)),
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None:
            log = log_path.read_text("utf-8", errors="replace")
            raise ServerStartError("the server exited before it was ready", process.returncode, log)
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            log = log_path.read_text("utf-8", errors="replace")
            raise ServerStartError("the server did not get ready in time", None, log)
        time.sleep(_POLL_SECONDS)
    info = json.loads(ready.read_text("utf-8"))
    return RunningServer(
        host=str(info["host"]),
        port=int(info["port"]),
        cert_path=Path(info["cert_path"]),
        fingerprint=str(info["cert_fingerprint"]),
        process=process,
        data_dir=data_dir,
        token=token or "",
        log_path=log_path,
        env=env,
        metrics_port=None if info.get("metrics_port") is None else int(info["metrics_port"]),
    )


@contextmanager
def ServerProcess(
    tmp_path: Path,
    *,
    token: str = TEST_TOKEN,
    db_key: str = TEST_DB_KEY,
    extra_env: Mapping[str, str] | None = None,
    data_dir: Path | None = None,
) -> Iterator[RunningServer]:
    """:func:`start_server` as a context manager that stops it (SIGTERM) on exit."""
    server = start_server(
        tmp_path, token=token, db_key=db_key, extra_env=extra_env, data_dir=data_dir
    )
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


_PG_USER = "qpq"
_PG_DATABASE = "qpq_tests"
#: The system user that owns the cluster when the tests run as root.
_PG_SYSTEM_USER = "postgres"


def _pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl (the newest installed version), or None."""
    found = shutil.which("initdb")
    if found is not None:
        bindir = Path(found).resolve().parent
        if (bindir / "pg_ctl").exists():
            return bindir
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: (
            int(Path(path).parent.parent.name) if Path(path).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """A running cluster; :meth:`schema_url` gives each test an empty schema of its own.

    ``durable``: keep PostgreSQL's defaults (an fsync per COMMIT) instead of
    running without fsync, for measurements that compare with SQLCipher's.
    Stop it with :meth:`stop` (it removes the directory).
    """

    def __init__(self, *, durable: bool = False) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL's initdb and pg_ctl were not found on PATH nor in "
                "/usr/lib/postgresql/*/bin: install Debian's postgresql package "
                "(apt-get install postgresql; .ci/run does this before tox)"
            )
        self._bindir = bindir
        self._as: list[str] = []
        self.base = Path(tempfile.mkdtemp(prefix="qpq-pg-"))
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(_PG_SYSTEM_USER)
            except KeyError:
                shutil.rmtree(self.base)
                raise RuntimeError(
                    "running as root, and initdb refuses root: the cluster needs the "
                    f"{_PG_SYSTEM_USER!r} system user (created by Debian's postgresql package)"
                ) from None
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", _PG_SYSTEM_USER, "--"]
        self.base.chmod(0o700)
        self.port = _free_port()
        self._data = self.base / "data"
        self._counter = itertools.count(1)
        self._run(
            "initdb",
            "-D",
            str(self._data),
            "-U",
            _PG_USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base} "
        options += "-c max_connections=200"
        if not durable:
            options += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        self._run(
            "pg_ctl", "-D", str(self._data), "-l", str(self.base / "log"), "-o", options, "-w",
            "-t", "60", "start",
        )  # fmt: skip
        self.sql("postgres", f"CREATE DATABASE {_PG_DATABASE}")

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(  # noqa: S603 - PostgreSQL programs, arguments built here
            [*self._as, str(self._bindir / program), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.base,
        )
        if result.returncode != 0:
            log = self.base / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {result.stderr.strip()}\n{tail}"
            )

    def url(self, database: str = _PG_DATABASE, schema: str | None = None) -> str:
        """The URL of ``database``, with ``schema`` first on its search path if given."""
        url = f"postgresql://{_PG_USER}@127.0.0.1:{self.port}/{database}"
        if schema is not None:
            url += "?options=" + quote(f"-csearch_path={schema}")
        return url

    def sql(self, database: str, statement: str) -> None:
        """Run one statement with psql (no driver needed for the setup)."""
        result = subprocess.run(  # noqa: S603 - PostgreSQL programs, arguments built here
            [
                str(self._bindir / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.url(database),
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")

    def schema_url(self) -> str:
        """The URL of a new, empty schema (its own tables, functions and migrations)."""
        schema = f"t{next(self._counter)}"
        self.sql(_PG_DATABASE, f"CREATE SCHEMA {schema}")
        return self.url(schema=schema)

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self._run("pg_ctl", "-D", str(self._data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
