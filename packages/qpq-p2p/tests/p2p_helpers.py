"""Helpers shared by the p2p tests (imported by name: tests run in prepend mode).

:class:`Member` is one client: an identity, its MLS state and a host that
does what a client's receive path does (dedupe by digest, process with
MLS, persist), in memory. Groups are built with real MLS state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from qpq_core import ApplicationMessage, Identity, MlsClient, MlsError
from qpq_p2p import (
    AddressSource,
    DeliveryDeferredError,
    DirectMessage,
    PeerAddress,
    PeerConfig,
    PeerNode,
    message_digest,
)
from qpq_proto import (
    Ack,
    CreateGroup,
    Endpoint,
    Fetch,
    MessageKind,
    PeerEndpoints,
    Publish,
    PublishEndpoints,
    ResolveEndpoints,
)
from qpq_server.testing import CallClient, RunningServer

LOCAL = "127.0.0.1"

#: Small timeouts: every peer is on this machine.
CONFIG = PeerConfig(
    listen_host=LOCAL,
    connect_timeout_seconds=3.0,
    ack_timeout_seconds=5.0,
    authenticate_timeout_seconds=5.0,
    unreachable_backoff_seconds=0.0,
)


@dataclass
class Member:
    """One client: identity, MLS state, and what its host persisted."""

    identity: Identity
    mls: MlsClient = field(init=False)
    #: Digests of every message processed, persisted with it.
    digests: set[bytes] = field(default_factory=set)
    #: (sender, plaintext) of every application message, in order.
    texts: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: What happened, in order: "persisted via direct", "duplicate via server"...
    log: list[str] = field(default_factory=list)
    #: When set, a direct message waits for it before being processed.
    hold: asyncio.Event | None = None
    #: Set once a direct message reached the host.
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set whenever something was persisted.
    persisted: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.mls = MlsClient(self.identity)

    @property
    def key(self) -> bytes:
        return self.identity.public_key

    async def receive(self, message: DirectMessage) -> None:
        """The host's receiver: as the client does it, in memory."""
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        assert message.digest == message_digest(message.payload)
        self.process(message.payload, "direct")

    def process(self, payload: bytes, path: str) -> None:
        """Skip a copy seen before; else process with MLS and persist, all in one step."""
        digest = message_digest(payload)
        if digest in self.digests:
            self.log.append(f"duplicate via {path}")
            return
        try:
            result = self.mls.process(payload)
        except MlsError as error:
            if path == "direct":
                raise DeliveryDeferredError(type(error).__name__) from error
            raise
        if isinstance(result, ApplicationMessage):
            self.texts.append((result.sender, result.plaintext))
        self.digests.add(digest)
        self.log.append(f"persisted via {path}")
        self.persisted.set()


def build_group(count: int) -> tuple[list[Member], bytes]:
    """``count`` members in one group (no server: the creator adds everyone, all join)."""
    members = [Member(Identity.generate()) for _ in range(count)]
    creator = members[0]
    group_id = creator.mls.create_group().group_id
    if count > 1:
        packages = [m.mls.create_key_packages(1).packages[0] for m in members[1:]]
        bundle = creator.mls.add_members(group_id, packages)
        creator.mls.merge_pending_commit(group_id)
        assert bundle.welcome is not None
        for member in members[1:]:
            member.mls.join_from_welcome(bundle.welcome)
    return members, group_id


class AddressBook:
    """A resolver the tests fill in: identity key -> addresses."""

    def __init__(self) -> None:
        self.addresses: dict[bytes, list[PeerAddress]] = {}
        self.asked: list[bytes] = []

    def add(self, key: bytes, port: int, host: str = LOCAL) -> None:
        self.addresses.setdefault(key, []).append(PeerAddress(host, port, AddressSource.STATIC))

    async def resolve(self, identity_key: bytes) -> tuple[PeerAddress, ...]:
        self.asked.append(identity_key)
        return tuple(self.addresses.get(identity_key, ()))


async def never(*_args: object) -> None:
    """A ``via_server`` a test expects not to be called."""
    raise AssertionError("the message went through the server")


@asynccontextmanager
async def nodes(
    members: Sequence[Member], book: AddressBook, config: PeerConfig = CONFIG, **changes: object
) -> AsyncIterator[list[PeerNode]]:
    """A started node per member, each listed in ``book``."""
    settings = replace(config, **changes) if changes else config  # type: ignore[arg-type]
    started: list[PeerNode] = []
    try:
        for member in members:
            node = PeerNode(member.identity, member.mls, member.receive, settings, resolvers=[book])
            await node.start()
            started.append(node)
            book.add(member.key, node.port)
        yield started
    finally:
        for node in started:
            await node.close()


class ServerConnection:
    """A member's connection to a real qpq server, as its host uses it.

    It is the :class:`qpq_p2p.RendezvousServer` a node attaches to, and the
    host's own server path: publish (the fallback) and fetch (receive).
    """

    def __init__(self, client: CallClient) -> None:
        self.client = client

    async def publish_endpoints(self, endpoints: tuple[Endpoint, ...]) -> None:
        await self.client.call(PublishEndpoints(endpoints=endpoints))

    async def resolve_endpoints(self, identity_key: bytes) -> PeerEndpoints:
        answer: PeerEndpoints = await self.client.call(ResolveEndpoints(identity_key=identity_key))
        return answer

    def via_server(self, group_id: bytes, epoch: int, message: bytes) -> Callable[[], Any]:
        """The host's fallback for ``message``: publish the same bytes through the server."""

        async def publish() -> None:
            await self.client.call(Publish(group_id, epoch, MessageKind.APPLICATION, message))

        return publish

    async def receive(self, member: Member) -> int:
        """Fetch what is queued, process each message (skipping copies seen), then ack."""
        messages = (await self.client.call(Fetch(limit=100))).messages
        for envelope in messages:
            member.process(envelope.payload, "server")
        if messages:
            await self.client.call(Ack(up_to_seq=messages[-1].seq))
        return len(messages)


@asynccontextmanager
async def group_on_server(
    server: RunningServer, count: int
) -> AsyncIterator[tuple[list[Member], bytes, list[ServerConnection]]]:
    """``count`` members, each connected and authenticated, in one group the server verified."""
    members = [Member(Identity.generate()) for _ in range(count)]
    async with AsyncExitStack() as stack:
        connections = []
        for member in members:
            client = await stack.enter_async_context(server.connect())
            await client.authenticate(member.identity)
            connections.append(ServerConnection(client))
        creator, creator_server = members[0], connections[0].client
        group = creator.mls.create_group()
        await creator_server.call(CreateGroup(group_info=group.group_info))
        packages = [m.mls.create_key_packages(1).packages[0] for m in members[1:]]
        bundle = creator.mls.add_members(group.group_id, packages)
        assert bundle.welcome is not None
        await creator_server.call(
            Publish(
                group.group_id,
                bundle.epoch,
                MessageKind.COMMIT,
                bundle.commit,
                welcome=bundle.welcome,
                group_info=bundle.group_info,
            )
        )
        creator.mls.merge_pending_commit(group.group_id)
        for member, connection in zip(members[1:], connections[1:], strict=True):
            (welcome,) = (await connection.client.call(Fetch(limit=10))).messages
            member.mls.join_from_welcome(welcome.payload)
            await connection.client.call(Ack(up_to_seq=welcome.seq))
        yield members, group.group_id, connections


@asynccontextmanager
async def attached(
    members: Sequence[Member],
    connections: Sequence[ServerConnection],
    configs: Sequence[PeerConfig] | None = None,
) -> AsyncIterator[list[PeerNode]]:
    """A started node per member (``CONFIG`` unless given), attached to its server connection."""
    async with AsyncExitStack() as stack:
        started = []
        for index, (member, connection) in enumerate(zip(members, connections, strict=True)):
            config = CONFIG if configs is None else configs[index]
            node = PeerNode(member.identity, member.mls, member.receive, config)
            await stack.enter_async_context(node)
            await node.attach_server(connection)
            started.append(node)
        yield started
