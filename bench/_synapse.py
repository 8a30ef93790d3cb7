"""The reference: a Synapse homeserver subprocess driven by matrix-nio ``AsyncClient``\\ s.

Synapse gets a generated configuration in a temporary directory: SQLite,
one plain-HTTP client listener on 127.0.0.1, no federation, rate limits
raised so they never throttle the benchmark, registration by shared secret
only. Users are registered through the admin API; rooms are created by
their sender (who never syncs) with the receivers invited, and each
receiver joins. Messages are plaintext ``m.text`` events; each receiver is
one ``AsyncClient`` in ``sync_forever``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    MatrixRoom,
    RoomCreateResponse,
    RoomMessageText,
    RoomPreset,
    RoomSendResponse,
)

from bench._measure import Inbox
from bench._messenger import Room, check_loops, stop_loops

SERVER_NAME = "localhost"
_READY_DEADLINE = 180.0
_SYNC_TIMEOUT_MS = 30_000
_REGISTERING = 8
#: Receivers ask only for the message timeline: no presence, account data,
#: ephemeral events, and members loaded lazily. This spares the reference
#: work the benchmark does not need. The timeline limit is raised from the
#: default 10 so that a sync never answers "limited" (a gap the client would
#: have to backfill) when many messages arrive between two syncs.
SYNC_FILTER: dict[str, Any] = {
    "presence": {"types": []},
    "account_data": {"types": []},
    "room": {
        "state": {"lazy_load_members": True},
        "ephemeral": {"types": []},
        "account_data": {"types": []},
        "timeline": {"types": ["m.room.message"], "limit": 1000},
    },
}
_UNLIMITED = {"per_second": 1_000_000, "burst_count": 1_000_000}
_RATE_LIMITS = (
    "rc_message",
    "rc_registration",
    "rc_registration_token_validity",
    "rc_admin_redaction",
    "rc_joins_per_room",
    "rc_key_requests",
    "rc_3pid_validation",
    "rc_third_party_invite",
    "rc_media_create",
    "rc_delayed_event_mgmt",
    "rc_room_creation",
    "rc_reports",
    "rc_user_directory",
    "rc_profile",
)
_NESTED_RATE_LIMITS = {
    "rc_login": ("address", "account", "failed_attempts"),
    "rc_joins": ("local", "remote"),
    "rc_invites": ("per_room", "per_user", "per_issuer"),
    "rc_presence": ("per_user",),
}


class MatrixError(RuntimeError):
    """The homeserver answered a request with an error."""


def _expect(answer: Any, kind: type[Any], what: str) -> Any:
    """``answer`` if it is a ``kind`` (nio returns errors as values), else raise."""
    if isinstance(answer, kind):
        return answer
    raise MatrixError(f"{what}: {answer}")


@dataclass(frozen=True, slots=True)
class Login:
    user_id: str
    device_id: str
    access_token: str


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _config(workdir: Path, port: int, shared_secret: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "pid_file": str(workdir / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(workdir / "homeserver.db")}},
        "log_config": str(workdir / "log.yaml"),
        "media_store_path": str(workdir / "media"),
        "signing_key_path": str(workdir / "signing.key"),
        "registration_shared_secret": shared_secret,
        "enable_registration": False,
        "report_stats": False,
        # Federation off: no federation listener, nobody to federate with.
        "federation_domain_whitelist": [],
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "presence": {"enabled": False},
        # Registration is set-up, not measured: cheap password hashing.
        "bcrypt_rounds": 4,
    }
    for name in _RATE_LIMITS:
        config[name] = dict(_UNLIMITED)
    for name, parts in _NESTED_RATE_LIMITS.items():
        config[name] = {part: dict(_UNLIMITED) for part in parts}
    return config


def _log_config(workdir: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "plain",
                "filename": str(workdir / "homeserver.log"),
            }
        },
        "root": {"level": "WARNING", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


class SynapseServer:
    """A Synapse subprocess with a generated configuration, and its admin API."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._shared_secret = secrets.token_urlsafe(32)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("Synapse is not running")
        return self._process.pid

    def _command(self, *args: str) -> list[str]:
        config = str(self.workdir / "homeserver.yaml")
        return [sys.executable, "-m", "synapse.app.homeserver", "--config-path", config, *args]

    def launch(self) -> None:
        """Write the configuration, generate the signing key, start the process."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        # JSON is YAML: Synapse reads these as its configuration files.
        config = _config(self.workdir, self.port, self._shared_secret)
        (self.workdir / "homeserver.yaml").write_text(json.dumps(config, indent=2))
        (self.workdir / "log.yaml").write_text(json.dumps(_log_config(self.workdir), indent=2))
        subprocess.run(  # noqa: S603 - our own interpreter and module
            self._command("--generate-keys"),
            check=True,
            capture_output=True,
            cwd=self.workdir,
        )
        with (self.workdir / "stdout.log").open("wb") as out:
            self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                self._command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        """Poll /health until it answers 200, with a deadline."""
        deadline = time.monotonic() + _READY_DEADLINE
        while not await self._healthy(session):
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"Synapse exited before it was ready:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Synapse was not ready within {_READY_DEADLINE:.0f} s")
            await asyncio.sleep(0.1)

    async def _healthy(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(f"{self.url}/health") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    def log(self) -> str:
        parts = []
        for name in ("stdout.log", "homeserver.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(path.read_text("utf-8", errors="replace")[-4000:])
        return "\n".join(parts)

    async def register(self, session: aiohttp.ClientSession, username: str) -> Login:
        """Register ``username`` with the shared secret (admin API); returns its login."""
        endpoint = f"{self.url}/_synapse/admin/v1/register"
        async with session.get(endpoint) as response:
            response.raise_for_status()
            nonce = str((await response.json())["nonce"])
        password = secrets.token_urlsafe(16)
        mac = hmac.new(self._shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(
            b"\x00".join((nonce.encode(), username.encode(), password.encode(), b"notadmin"))
        )
        payload = {
            "nonce": nonce,
            "username": username,
            "password": password,
            "admin": False,
            "mac": mac.hexdigest(),
        }
        async with session.post(endpoint, json=payload) as response:
            if response.status != 200:
                raise RuntimeError(
                    f"registering {username}: {response.status} {await response.text()}"
                )
            answer = await response.json()
        return Login(str(answer["user_id"]), str(answer["device_id"]), str(answer["access_token"]))

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(30.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class SynapseMessenger:
    """Synapse + matrix-nio as a :class:`bench._messenger.Messenger`."""

    name = "Synapse"
    #: ``room_send`` calls may overlap freely; the workload's window applies.
    max_in_flight = 1_000_000

    def __init__(self, server: SynapseServer, session: aiohttp.ClientSession) -> None:
        self.inbox = Inbox()
        self.synapse = server
        self.session = session
        self._receivers: list[AsyncClient] = []
        self._names: dict[str, str] = {}  # user id -> receiver name
        self._loops: list[asyncio.Task[None]] = []
        self._owners: dict[str, tuple[AsyncClient, str]] = {}
        self._rooms: dict[str, Room] = {}
        self._registering = asyncio.Semaphore(_REGISTERING)

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, workdir: Path) -> AsyncIterator[SynapseMessenger]:
        server = SynapseServer(workdir / "synapse")
        async with aiohttp.ClientSession() as session:
            try:
                server.launch()
                await server.wait_ready(session)
                messenger = cls(server, session)
                try:
                    yield messenger
                finally:
                    await messenger._close()
            finally:
                server.stop()

    @property
    def server_pid(self) -> int:
        return self.synapse.pid

    @property
    def settings(self) -> str:
        return (
            "Synapse subprocess (one process, no workers), SQLite, plain HTTP on 127.0.0.1, "
            "federation off, presence off, rate limits raised, log level WARNING; clients are "
            "matrix-nio AsyncClients, receivers in sync_forever (30 s long-poll) with a filter "
            "asking only for m.room.message timeline events"
        )

    async def client(self, username: str) -> AsyncClient:
        """Register ``username`` and return an ``AsyncClient`` logged in as it."""
        async with self._registering:
            login = await self.synapse.register(self.session, username)
        client = AsyncClient(
            self.synapse.url,
            login.user_id,
            device_id=login.device_id,
            config=AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False),
        )
        client.restore_login(login.user_id, login.device_id, login.access_token)
        return client

    async def _ensure_receivers(self, count: int) -> None:
        missing = range(len(self._receivers), count)
        created = await asyncio.gather(*(self.client(f"r{i}") for i in missing))
        for index, client in zip(missing, created, strict=True):
            name = f"r{index}"
            self._receivers.append(client)
            self._names[client.user_id] = name
            loop = asyncio.create_task(self._sync(client, name), name=f"sync {name}")
            self._loops.append(loop)

    async def _sync(self, client: AsyncClient, name: str) -> None:
        def on_message(_room: MatrixRoom, event: RoomMessageText) -> None:
            if event.sender != client.user_id:
                self.inbox.arrived(name, event.body)

        client.add_event_callback(on_message, RoomMessageText)
        await client.sync_forever(timeout=_SYNC_TIMEOUT_MS, sync_filter=SYNC_FILTER)

    async def room(self, name: str, receivers: range) -> Room:
        known = self._rooms.get(name)
        if known is not None:
            return known
        await self._ensure_receivers(receivers.stop)
        members = [self._receivers[i] for i in receivers]
        owner = await self.client(f"{name}-owner")
        created = _expect(
            await owner.room_create(
                name=name, preset=RoomPreset.private_chat, invite=[c.user_id for c in members]
            ),
            RoomCreateResponse,
            f"creating room {name}",
        )
        joining = asyncio.Semaphore(_REGISTERING)

        async def join(client: AsyncClient) -> None:
            async with joining:
                joined = await client.join(created.room_id)
            _expect(joined, JoinResponse, f"{client.user_id} joining {name}")

        await asyncio.gather(*(join(c) for c in members))
        self._owners[name] = (owner, created.room_id)
        room = Room(name, tuple(self._names[c.user_id] for c in members))
        self._rooms[name] = room
        return room

    async def calls(self) -> dict[str, float] | None:
        """Not counted: Synapse's metrics listener stays off, as configured."""
        return None

    async def send(self, room: Room, text: str) -> None:
        owner, room_id = self._owners[room.name]
        content = {"msgtype": "m.text", "body": text}
        sent = await owner.room_send(room_id, "m.room.message", content)
        _expect(sent, RoomSendResponse, f"sending to {room.name}")

    async def refresh(self) -> None:
        """Nothing to do: HTTP requests open a new connection when an idle one was closed."""

    def check(self) -> None:
        check_loops(self._loops)

    async def _close(self) -> None:
        await stop_loops(self._loops)
        for client in [*self._receivers, *(owner for owner, _ in self._owners.values())]:
            with contextlib.suppress(Exception):
                await client.close()
