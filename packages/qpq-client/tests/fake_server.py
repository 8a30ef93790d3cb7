"""An in-memory delivery service and the sessions that talk to it.

It keeps the server's ordering rules that the client's commit logic relies
on (one accepted commit per group epoch, per-recipient queues in seq order,
acknowledgement by seq, single-use KeyPackages), so the receive and commit
paths run in seconds with real MLS state and a real SQLCipher store,
without QUIC or a server process. Hooks let a test act at an exact point
("while alice's commit is on its way, bob's lands first").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import qpq_proto as p
from qpq_client._session import Session
from qpq_client._state import StateStore
from qpq_core import Identity, MlsClient
from qpq_proto.errors import EpochConflictError, NotFoundError

#: Runs before a publish is handled: (publisher, the call) -> awaitable.
PublishHook = Callable[["FakeConnection", p.Publish], Awaitable[None]]


@dataclass
class FakeServer:
    """What the real server stores, in dicts."""

    queues: dict[bytes, list[p.Envelope]] = field(default_factory=lambda: defaultdict(list))
    last_seq: dict[bytes, int] = field(default_factory=lambda: defaultdict(int))
    commit_epochs: dict[bytes, int] = field(default_factory=dict)
    usernames: dict[str, bytes] = field(default_factory=dict)
    key_packages: dict[bytes, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    before_publish: list[PublishHook] = field(default_factory=list)
    published: list[tuple[bytes, p.Publish]] = field(default_factory=list)

    def deliver(self, sender: bytes, recipient: bytes, payload: bytes) -> int:
        self.last_seq[recipient] += 1
        seq = self.last_seq[recipient]
        self.queues[recipient].append(p.Envelope(seq, sender, payload, 1_700_000_000_000 + seq))
        return seq


class FakeConnection:
    """The calls :class:`qpq_client._session.Session` makes, answered by a :class:`FakeServer`."""

    def __init__(self, server: FakeServer, identity_key: bytes) -> None:
        self.server = server
        self.identity_key = identity_key

    async def close(self) -> None:
        pass

    async def register_user(self, username: str) -> None:
        self.server.usernames[username] = self.identity_key

    async def resolve_user(self, username: str) -> bytes:
        try:
            return self.server.usernames[username]
        except KeyError:
            raise NotFoundError("no such username", field="username") from None

    async def resolve_identity(self, identity_key: bytes) -> str:
        for name, key in self.server.usernames.items():
            if key == identity_key:
                return name
        raise NotFoundError("this identity has no username", field="identity_key")

    async def upload_key_packages(self, packages: tuple[bytes, ...]) -> p.Fingerprints:
        self.server.key_packages[self.identity_key].extend(packages)
        return p.Fingerprints(tuple(bytes(32) for _ in packages))

    async def upload_last_resort(self, package: bytes) -> p.Fingerprint:
        return p.Fingerprint(bytes(32))

    async def count_key_packages(self) -> p.KeyPackageCount:
        return p.KeyPackageCount(len(self.server.key_packages[self.identity_key]), True)

    async def fetch_key_package(self, identity_key: bytes) -> bytes:
        packages = self.server.key_packages[identity_key]
        if not packages:
            raise NotFoundError("no KeyPackage", field="identity_key")
        return packages.pop(0)

    async def enqueue(self, recipient: bytes, payload: bytes) -> int:
        return self.server.deliver(self.identity_key, recipient, payload)

    async def publish(
        self,
        group_id: bytes,
        epoch: int,
        kind: p.MessageKind,
        payload: bytes,
        recipients: tuple[bytes, ...],
    ) -> int:
        call = p.Publish(group_id, epoch, kind, payload, recipients)
        for hook in list(self.server.before_publish):
            await hook(self, call)
        if kind is p.MessageKind.COMMIT:
            if self.server.commit_epochs.get(group_id, -1) >= epoch:
                raise EpochConflictError("a commit for this epoch was already accepted")
            self.server.commit_epochs[group_id] = epoch
        self.server.published.append((self.identity_key, call))
        for recipient in recipients:
            self.server.deliver(self.identity_key, recipient, payload)
        return len(recipients)

    async def fetch(self, limit: int) -> tuple[p.Envelope, ...]:
        return tuple(self.server.queues[self.identity_key][:limit])

    async def fetch_wait(self, limit: int, wait_ms: int) -> tuple[p.Envelope, ...]:
        return await self.fetch(limit)

    async def ack(self, up_to_seq: int) -> int:
        queue = self.server.queues[self.identity_key]
        kept = [e for e in queue if e.seq > up_to_seq]
        removed = len(queue) - len(kept)
        self.server.queues[self.identity_key] = kept
        return removed


async def make_session(server: FakeServer, home: Path, username: str) -> Session:
    """A registered user with KeyPackages on ``server`` and state in ``home``."""
    from qpq_client._keys import ensure_key_packages

    identity = Identity.generate()
    store = StateStore.open(home, "pw", create=True)
    with store.transaction() as tx:
        tx.set_identity(identity.secret_bytes(), username)
    conn = FakeConnection(server, identity.public_key)
    await conn.register_user(username)
    session = Session(store, MlsClient(identity), identity, username, conn)  # type: ignore[arg-type]
    await ensure_key_packages(session)
    return session
