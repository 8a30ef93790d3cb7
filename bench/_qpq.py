"""qpq under test: a real ``qpq-server`` subprocess and ``qpq_client.Client`` library clients.

Every user is a full profile (its own SQLCipher state, MLS, QUIC connection);
receivers sit in :meth:`Client.follow`, so what is measured is whatever the
library's public receive path does.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

from bench._measure import Inbox
from bench._messenger import Room, check_loops, stop_loops
from qpq_client import Client, InvitePolicy, ServerAddress, Suite, Trust
from qpq_server.testing import RunningServer, start_server

#: The rate limiter stays in the path but never trips; the scale phase opens
#: every connection from 127.0.0.1 and goes as far as the machine allows, so
#: the connection caps (per address and in all) are lifted above it.
SERVER_ENV = {
    "QPQ_RATE_PER_SECOND": "1000000000",
    "QPQ_RATE_BURST": "1000000000",
    "QPQ_MAX_CONNECTIONS_PER_ADDRESS": "100000",
    "QPQ_MAX_CONNECTIONS": "100000",
    # Registration is open (development's default, per-address limit lifted
    # by the harness); the per-account limits are lifted like the rate limit.
    "QPQ_ACCOUNT_MESSAGES_PER_HOUR": "1000000000",
    "QPQ_INVITATIONS_TO_STRANGERS_PER_DAY": "1000000",
    "QPQ_KEY_PACKAGE_CLAIMS_PER_ACCOUNT_PER_DAY": "1000000",
    # Calls by kind (qpq_calls_total), to count what one message costs the server.
    "QPQ_METRICS_LISTEN": "127.0.0.1:0",
}
#: Profiles live in a temporary directory for one run; the passphrase guards nothing.
PASSPHRASE = "benchmark-profile-passphrase"  # noqa: S105 - not a secret
#: Profiles created at once: enough to overlap round trips on two cores.
_CREATING = 8
_JOIN_DEADLINE = 120.0


class QpqMessenger:
    """qpq as a :class:`bench._messenger.Messenger`."""

    name = "qpq"
    # Sends of one Client may overlap: each is staged in order under the
    # client's lock and handed over on its own, and no catch-up republishes
    # a send still in flight.
    max_in_flight = 1_000_000

    def __init__(self, workdir: Path, server: RunningServer, suite: Suite = Suite.DEFAULT) -> None:
        self.inbox = Inbox()
        #: The MLS ciphersuite of every room (group) this messenger creates.
        self.suite = suite
        self._workdir = workdir
        self._server = server
        self._receivers: list[Client] = []
        self._loops: list[asyncio.Task[None]] = []
        self._owners: dict[str, Client] = {}
        self._rooms: dict[str, Room] = {}
        self._yielded = asyncio.Condition()
        self._creating = asyncio.Semaphore(_CREATING)

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, workdir: Path, suite: Suite = Suite.DEFAULT
    ) -> AsyncIterator[QpqMessenger]:
        """Start the server (SQLCipher store) in ``workdir``, stop it and every client after;
        rooms are groups of ``suite``."""
        server_dir = workdir / "qpq-server"
        server_dir.mkdir()
        server = start_server(server_dir, extra_env=SERVER_ENV)
        messenger = cls(workdir, server, suite)
        try:
            yield messenger
        finally:
            await messenger._close()
            try:
                server.stop()
            except subprocess.TimeoutExpired:
                # stop() killed it: what was measured stands, the slow shutdown is told.
                print("qpq-server did not stop within its wait after SIGTERM; killed", flush=True)

    @property
    def server(self) -> RunningServer:
        return self._server

    @property
    def server_pid(self) -> int:
        return self._server.process.pid

    async def calls(self) -> dict[str, float]:
        """Calls the server handled so far, by call (its ``qpq_calls_total``)."""
        port = self._server.metrics_port
        if port is None:
            raise RuntimeError("the qpq server has no metrics listener")
        return await asyncio.to_thread(_scrape_calls, port)

    @property
    def settings(self) -> str:
        return (
            "qpq-server subprocess, SQLCipher store (WAL, synchronous=FULL), log level INFO, "
            "rate limits lifted; clients are qpq_client.Client profiles (SQLCipher state, MLS), "
            "receivers in Client.follow()"
        )

    async def create_profile(self, username: str) -> Client:
        """A new registered profile of our own (not a receiver, no receive loop)."""
        async with self._creating:
            return await Client.create(
                self._workdir / "qpq-homes" / username,
                PASSPHRASE,
                username,
                server=ServerAddress(self._server.host, self._server.port),
                trust=Trust(pin=self._server.fingerprint),
                token=self._server.token,
            )

    async def _ensure_receivers(self, count: int) -> None:
        missing = range(len(self._receivers), count)
        created = await asyncio.gather(*(self.create_profile(f"r{i}") for i in missing))
        for client in created:
            # Each room's owner is a stranger to its members: join its
            # invitations at once instead of holding them as requests.
            await client.set_invite_policy(InvitePolicy.ANYONE)
            self._receivers.append(client)
            loop = asyncio.create_task(self._follow(client), name=f"follow {client.username}")
            self._loops.append(loop)

    async def _follow(self, client: Client) -> None:
        async for entry in client.follow():
            if entry.kind == "text":
                self.inbox.arrived(client.username, entry.body)
            elif not entry.body.startswith("you joined"):
                self.inbox.anomaly(client.username, entry.body)
            async with self._yielded:
                self._yielded.notify_all()

    async def room(self, name: str, receivers: range) -> Room:
        known = self._rooms.get(name)
        if known is not None:
            return known
        await self._ensure_receivers(receivers.stop)
        members = [self._receivers[i] for i in receivers]
        owner = await self.create_profile(f"{name}-owner")
        self._owners[name] = owner
        await owner.create_group(name, self.suite)
        await owner.invite(name, [c.username for c in members])

        def missing() -> list[str]:
            return [c.username for c in members if all(g.name != name for g in c.groups())]

        def joined() -> bool:
            self.check()
            return not missing()

        # Measure from a group every receiver has joined: its Welcome processed.
        try:
            async with asyncio.timeout(_JOIN_DEADLINE), self._yielded:
                await self._yielded.wait_for(joined)
        except TimeoutError:
            late = missing()
            raise TimeoutError(
                f"{len(late)} of {len(members)} members had not joined {name!r} within "
                f"{_JOIN_DEADLINE:.0f} s (first: {late[0] if late else '?'})"
            ) from None
        room = Room(name, tuple(c.username for c in members))
        self._rooms[name] = room
        return room

    async def send(self, room: Room, text: str) -> None:
        await self._owners[room.name].send(room.name, text)

    async def refresh(self) -> None:
        """Reconnect every sender: a connection idle past the QUIC idle timeout is
        closed, and a Client does not reconnect by itself."""
        for name, owner in list(self._owners.items()):
            home = owner.home
            await owner.close()
            reopened = Client.open(home, PASSPHRASE)
            await reopened.connect()
            self._owners[name] = reopened

    def check(self) -> None:
        check_loops(self._loops)

    async def _close(self) -> None:
        await stop_loops(self._loops)
        for client in [*self._receivers, *self._owners.values()]:
            with contextlib.suppress(Exception):
                await client.close()


def _scrape_calls(port: int) -> dict[str, float]:
    """``qpq_calls_total`` by call, from the server's Prometheus text."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode("utf-8")
    calls: dict[str, float] = {}
    prefix = 'qpq_calls_total{call="'
    for line in text.splitlines():
        if line.startswith(prefix):
            name, _, value = line[len(prefix) :].partition('"} ')
            calls[name] = float(value)
    return calls
