"""The fault harness's parts: a lossy UDP relay, server memory, library clients and checks.

Everything runs on 127.0.0.1: real ``qpq-server`` processes, library
clients in this process (or in child processes, see fault_client.py), and
a UDP relay between them that loses, delays, duplicates and reorders
datagrams from a seeded random source. How long and how hard a case runs
comes from :data:`SCALE`: 1 in the default suite (every case under a
minute), more in ``tox -e soak`` (``SOAK_SCALE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import NO_RATE_LIMIT, PASSPHRASE

from qpq_client import Client, ServerAddress, Trust
from qpq_server.testing import RunningServer, ServerProcess

#: How much longer and harder the cases run: 1 by default, more under ``tox -e soak``.
SCALE = max(1, int(os.environ.get("SOAK_SCALE", "1")))
MIB = 1024 * 1024
#: The label every member's exporter secret is compared by (RFC 9420 §8.5).
EXPORTER_LABEL = "qpq fault harness"


@contextlib.contextmanager
def fault_server(tmp_path: Path, **env: str) -> Iterator[RunningServer]:
    """A real server in ``tmp_path/server`` with no rate limit (and ``env`` settings)."""
    home = tmp_path / "server"
    home.mkdir(exist_ok=True)
    with ServerProcess(home, extra_env={**NO_RATE_LIMIT, **env}) as server:
        yield server


def rss(pid: int, field: str = "VmRSS") -> int:
    """Resident (``VmRSS``) or peak resident (``VmHWM``) bytes of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def report(*lines: str) -> None:
    """Print the figures a case measured (shown with ``-s``, as ``tox -e soak`` runs)."""
    for line in lines:
        print(f"[faults] {line}")


# ---- a lossy network --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Impairment:
    """What the relay does to each datagram, independently, in each direction.

    Attributes:
        loss: probability that it is dropped.
        duplicate: probability that it is sent twice (each copy delayed on its own).
        delay_ms: its delay is uniform in this range; datagrams whose delays
            differ overtake each other, so a range reorders.
    """

    loss: float = 0.0
    duplicate: float = 0.0
    delay_ms: tuple[float, float] = (0.0, 0.0)

    def __str__(self) -> str:
        low, high = self.delay_ms
        return f"{self.loss:.0%} loss, {self.duplicate:.0%} duplicated, {low:g}-{high:g} ms delay"


@dataclass(slots=True)
class RelayStats:
    datagrams: int = 0
    dropped: int = 0
    duplicated: int = 0
    overtaken: int = 0


class _Front(asyncio.DatagramProtocol):
    def __init__(self, relay: LossyRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay._from_client(data, addr)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: LossyRelay, client: Any) -> None:
        self.relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        for data in self.waiting:
            transport.sendto(data)  # type: ignore[attr-defined]
        self.waiting.clear()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay._impair(data, self.relay._to_client(self.client))


class LossyRelay:
    """A UDP relay on 127.0.0.1: clients talk to it as if it were the server.

    Each client address gets its own socket towards the server (as a NAT
    would), and every datagram in either direction goes through
    :class:`Impairment` with a random source seeded by ``seed``.
    """

    def __init__(self, server: RunningServer, impairment: Impairment, seed: int) -> None:
        self.target = (server.host, server.port)
        self.impairment = impairment
        self.stats = RelayStats()
        self._rng = random.Random(seed)
        self._front: asyncio.DatagramTransport | None = None
        self._upstreams: dict[Any, _Upstream] = {}
        self._last_due = 0.0
        self.port = 0

    async def start(self) -> LossyRelay:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Front(self), local_addr=("127.0.0.1", 0)
        )
        self._front = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        return self

    def address(self) -> ServerAddress:
        return ServerAddress("127.0.0.1", self.port)

    def close(self) -> None:
        for upstream in self._upstreams.values():
            if upstream.transport is not None:
                upstream.transport.close()
        self._upstreams.clear()
        if self._front is not None:
            self._front.close()
            self._front = None

    def _from_client(self, data: bytes, client: Any) -> None:
        upstream = self._upstreams.get(client)
        if upstream is None:
            upstream = self._upstreams[client] = _Upstream(self, client)
            asyncio.get_running_loop().create_task(self._connect(upstream))
        self._impair(data, lambda d: self._to_server(upstream, d))

    async def _connect(self, upstream: _Upstream) -> None:
        await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: upstream, remote_addr=self.target
        )

    @staticmethod
    def _to_server(upstream: _Upstream, data: bytes) -> None:
        if upstream.transport is None:
            upstream.waiting.append(data)
        elif not upstream.transport.is_closing():
            upstream.transport.sendto(data)

    def _to_client(self, client: Any) -> Callable[[bytes], None]:
        def send(data: bytes) -> None:
            if self._front is not None:
                self._front.sendto(data, client)

        return send

    def _impair(self, data: bytes, send: Callable[[bytes], None]) -> None:
        rng, what = self._rng, self.impairment
        self.stats.datagrams += 1
        if rng.random() < what.loss:
            self.stats.dropped += 1
            return
        copies = 1
        if rng.random() < what.duplicate:
            self.stats.duplicated += 1
            copies = 2
        loop = asyncio.get_running_loop()
        for _ in range(copies):
            delay = rng.uniform(*what.delay_ms) / 1000
            due = loop.time() + delay
            if due < self._last_due:
                self.stats.overtaken += 1
            self._last_due = max(self._last_due, due)
            if delay > 0:
                loop.call_later(delay, send, data)
            else:
                send(data)


@contextlib.asynccontextmanager
async def lossy_relay(
    server: RunningServer, impairment: Impairment, seed: int
) -> AsyncIterator[LossyRelay]:
    relay = await LossyRelay(server, impairment, seed).start()
    try:
        yield relay
    finally:
        relay.close()


# ---- library clients ----------------------------------------------------------


@dataclass
class Member:
    """A library client and what it sent that the server acknowledged.

    Messages are numbered by attempt: one whose send was cut short (and is
    sent again from the outbox later) keeps its number.
    """

    client: Client
    sent: list[str] = field(default_factory=list)
    attempts: int = 0

    @property
    def name(self) -> str:
        return self.client.username

    @property
    def group(self) -> str:
        """The local name of the member's one group."""
        (group,) = self.client.groups()
        return group.name

    @property
    def group_id(self) -> bytes:
        (group,) = self.client.groups()
        return group.group_id

    def exporter(self) -> bytes:
        """The group's exporter secret: equal across members iff they share the epoch."""
        return self.client._mls.export_secret(self.group_id, EXPORTER_LABEL, b"", 32)

    def texts_by_sender(self) -> dict[str, list[str]]:
        """The group's text messages from the others, in the order they were shown."""
        received: dict[str, list[str]] = {}
        for entry in self.client.history(self.group):
            if entry.kind == "text" and not entry.outgoing:
                received.setdefault(entry.sender, []).append(entry.body)
        return received

    def unreadable(self) -> list[str]:
        return [e.body for e in self.client.history(self.group) if "could not be read" in e.body]


async def open_member(
    home: Path,
    username: str,
    server: RunningServer,
    address: ServerAddress | None = None,
) -> Member:
    """A new profile on ``server`` (through ``address``, a relay, if given)."""
    client = await Client.create(
        home,
        PASSPHRASE,
        username,
        server=address or ServerAddress(server.host, server.port),
        trust=Trust(pin=server.fingerprint),
        token=server.token,
        connect_timeout=30.0,
    )
    return Member(client)


async def reopen(member: Member, address: ServerAddress | None = None) -> Member:
    """The member's profile opened again, as a new process would (its connection is gone)."""
    home = member.client.home
    with contextlib.suppress(Exception):
        await member.client.close()
    client = Client.open(home, PASSPHRASE)
    await client.connect(server=address, connect_timeout=30.0)
    return Member(client, member.sent, member.attempts)


async def form_group(owner: Member, others: Sequence[Member], name: str = "team") -> None:
    """``owner`` creates a group and invites the others; each has joined on return.

    Each of the others has ``owner`` as a contact first, so that the
    invitation is joined rather than held as a request.
    """
    for member in others:
        await member.client.add_contact(owner.name)
    await owner.client.create_group(name)
    await owner.client.invite(name, [m.name for m in others])
    for member in others:
        await receive_until(member, lambda m: bool(m.client.groups()), within=60)


async def receive_until(member: Member, done: Callable[[Member], bool], *, within: float) -> None:
    """Receive (processing commits, messages, Welcomes) until ``done(member)`` holds."""
    deadline = asyncio.get_running_loop().time() + within
    while not done(member):
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"{member.name} did not get there within {within:g} s"
        await member.client.receive(wait=min(2.0, left))


async def catch_up(*members: Member) -> None:
    """Each member processes whatever the server holds for it now."""
    for member in members:
        await member.client.receive(wait=0)


def has_all(expected: dict[str, list[str]]) -> Callable[[Member], bool]:
    """Whether a member has received every message of ``expected`` but its own."""

    def check(member: Member) -> bool:
        received = member.texts_by_sender()
        return all(
            set(bodies) <= set(received.get(sender, ()))
            for sender, bodies in expected.items()
            if sender != member.name
        )

    return check


def check_exactly_once_in_order(members: Iterable[Member], expected: dict[str, list[str]]) -> None:
    """Each member got each other's messages of ``expected`` exactly once, in sending order."""
    for member in members:
        received = member.texts_by_sender()
        for sender, bodies in expected.items():
            if sender != member.name:
                assert received.get(sender, []) == bodies, (member.name, sender)


async def send_all(member: Member, count: int, *, tag: str = "") -> None:
    """Send ``count`` numbered messages; each one the server acknowledged is recorded."""
    for _ in range(count):
        body = f"{member.name}{tag}:{member.attempts}"
        member.attempts += 1
        await member.client.send(member.group, body)
        member.sent.append(body)
