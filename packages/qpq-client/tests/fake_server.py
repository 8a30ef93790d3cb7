"""An in-memory delivery service and the sessions that talk to it.

It keeps the server's rules that the client's commit and receive logic rely
on, with the server's real MLS verification (qpq-core's DeliveryGroup):
handshake messages verified against each group's public state, one accepted
commit per epoch (a conflict names the accepted commit's hash, the same
commit sent again is answered as accepted), fan-out by the verified roster,
a commit's Welcome to the members it adds, per-recipient queues in seq
order acknowledged by seq, single-use KeyPackages, and a gap notice instead
of a message for a recipient whose queue is "full" (``server.full``). So the
receive and commit paths run in seconds with real MLS state and a real
SQLCipher store, without QUIC or a server process. Hooks let a test act at
an exact point ("while alice's commit is on its way, bob's lands first").
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import qpq_proto as p
from qpq_client._session import Session
from qpq_client._state import StateStore
from qpq_core import (
    SUITES,
    CommitVerified,
    DeliveryGroup,
    Identity,
    MlsClient,
    MlsError,
    NotAMemberError,
    WrongEpochError,
    validate_key_package,
)
from qpq_proto.errors import (
    AlreadyExistsError,
    EpochConflictError,
    ForbiddenError,
    InvalidArgumentError,
    NotFoundError,
)

#: Runs before a publish is handled: (publisher, the call) -> awaitable.
PublishHook = Callable[["FakeConnection", p.Publish], Awaitable[None]]


@dataclass
class FakeGroup:
    state: DeliveryGroup
    group_info: bytes
    accepted: dict[int, bytes] = field(default_factory=dict)


@dataclass
class FakeServer:
    """What the real server stores, in dicts."""

    queues: dict[bytes, list[p.Envelope]] = field(default_factory=lambda: defaultdict(list))
    last_seq: dict[bytes, int] = field(default_factory=lambda: defaultdict(int))
    groups: dict[bytes, FakeGroup] = field(default_factory=dict)
    usernames: dict[str, bytes] = field(default_factory=dict)
    key_packages: dict[bytes, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    before_publish: list[PublishHook] = field(default_factory=list)
    published: list[tuple[bytes, p.Publish]] = field(default_factory=list)
    #: Recipients whose queue counts as full: they get a gap notice instead.
    full: set[bytes] = field(default_factory=set)

    def deliver(
        self,
        sender: bytes,
        recipient: bytes,
        payload: bytes,
        group_id: bytes,
        group_info_digest: bytes = b"",
    ) -> None:
        self.last_seq[recipient] += 1
        seq = self.last_seq[recipient]
        if recipient in self.full:
            gap = p.Envelope(seq, p.NO_SENDER, b"", 1_700_000_000_000 + seq, gap_group_id=group_id)
            self.queues[recipient].append(gap)
            return
        self.queues[recipient].append(
            p.Envelope(
                seq,
                sender,
                payload,
                1_700_000_000_000 + seq,
                group_id=group_id,
                group_info_digest=group_info_digest,
            )
        )


class FakeConnection:
    """The calls :class:`qpq_client._session.Session` makes, answered by a :class:`FakeServer`."""

    def __init__(self, server: FakeServer, identity_key: bytes) -> None:
        self.server = server
        self.identity_key = identity_key
        #: What a server announces with its challenge (the defaults here).
        self.limits = p.DEFAULT_LIMITS

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

    async def resolve_identities(self, identity_keys: tuple[bytes, ...]) -> dict[bytes, str]:
        names = {key: name for name, key in self.server.usernames.items()}
        return {key: names[key] for key in identity_keys if key in names}

    async def list_devices(self, account_key: bytes) -> p.Devices:
        # Every account of this server is one device: its own key.
        if account_key not in self.server.usernames.values():
            raise NotFoundError("no such account", field="account_key")
        return p.Devices(device_keys=(account_key,), certificates=(b"",))

    async def upload_key_packages(self, packages: tuple[bytes, ...]) -> p.Fingerprints:
        self.server.key_packages[self.identity_key].extend(packages)
        return p.Fingerprints(tuple(bytes(32) for _ in packages))

    async def upload_last_resort(self, package: bytes) -> p.Fingerprint:
        return p.Fingerprint(bytes(32))

    async def count_key_packages(self) -> p.KeyPackageCount:
        # Per suite, as a real server counts (the last resort always there).
        packages = self.server.key_packages[self.identity_key]
        suites = tuple(
            p.SuiteKeyPackageCount(
                suite, sum(validate_key_package(k).ciphersuite == suite for k in packages), True
            )
            for suite in SUITES
        )
        return p.KeyPackageCount(suites[0].count, True, suites=suites)

    async def fetch_key_package(
        self, identity_key: bytes, suite: int = p.DEFAULT_CIPHERSUITE
    ) -> bytes:
        packages = self.server.key_packages[identity_key]
        for at, package in enumerate(packages):
            if validate_key_package(package).ciphersuite == suite:
                return packages.pop(at)
        raise NotFoundError("no KeyPackage", field="identity_key")

    async def create_group(self, group_info: bytes) -> None:
        state, registered = DeliveryGroup.create(group_info)
        if registered.group_id in self.server.groups:
            raise AlreadyExistsError("a group with this id exists", field="group_id")
        self.server.groups[registered.group_id] = FakeGroup(state, group_info)

    async def fetch_group_info(self, group_id: bytes) -> p.GroupSnapshot:
        group = self._member_of(group_id)
        return p.GroupSnapshot(
            group_id, group.state.epoch(), group.group_info, group.state.ratchet_tree()
        )

    async def replace_group_info(self, group_id: bytes, group_info: bytes) -> None:
        group = self._member_of(group_id)
        try:
            group.state.check_group_info(group_info, self.identity_key)
        except WrongEpochError:
            raise EpochConflictError("another epoch", epoch=group.state.epoch()) from None
        except MlsError as error:
            raise InvalidArgumentError(f"refused: {error}", field="group_info") from None
        group.group_info = group_info

    def _member_of(self, group_id: bytes) -> FakeGroup:
        group = self.server.groups.get(group_id)
        if group is None:
            raise NotFoundError("no such group", field="group_id")
        if self.identity_key not in group.state.members():
            raise ForbiddenError("only a member may fetch the group's GroupInfo")
        return group

    async def publish(
        self,
        group_id: bytes,
        epoch: int,
        kind: p.MessageKind,
        payload: bytes,
        *,
        welcome: bytes = b"",
        group_info: bytes = b"",
    ) -> p.Published:
        call = p.Publish(group_id, epoch, kind, payload, welcome=welcome, group_info=group_info)
        for hook in list(self.server.before_publish):
            await hook(self, call)
        group = self.server.groups.get(group_id)
        if group is None:
            raise NotFoundError("no such group", field="group_id")
        before = group.state.members()
        if self.identity_key not in before:
            raise ForbiddenError("only a current member may send to this group")
        current = group.state.epoch()
        if kind is not p.MessageKind.APPLICATION:
            digest = hashlib.sha256(payload).digest()
            if kind is p.MessageKind.COMMIT and group.accepted.get(epoch) == digest:
                return p.Published(0, current)
            if epoch != current:
                raise EpochConflictError(
                    "the epoch moved on",
                    accepted_commit=group.accepted.get(epoch, b""),
                    epoch=current,
                )
            try:
                verified = group.state.verify(payload, group_info or None)
            except NotAMemberError:
                raise ForbiddenError("the sender is not a member") from None
            except MlsError as error:
                raise InvalidArgumentError(f"refused: {error}", field="payload") from None
            info_digest = b""
            if isinstance(verified, CommitVerified):
                group.accepted[epoch] = digest
                group.group_info = group_info
                info_digest = verified.group_info_facts.digest
                for joiner in verified.added:
                    self.server.deliver(self.identity_key, joiner, welcome, group_id)
        else:
            info_digest = b""
        self.server.published.append((self.identity_key, call))
        others = [m for m in before if m != self.identity_key]
        for recipient in others:
            self.server.deliver(self.identity_key, recipient, payload, group_id, info_digest)
        return p.Published(len(others), group.state.epoch())

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


async def make_session(
    server: FakeServer, home: Path, username: str, *, contacts: tuple[str, ...] = ()
) -> Session:
    """A registered user with KeyPackages on ``server`` and state in ``home``.

    ``contacts``: users (registered already) it looks up, so their invitations are joined.
    """
    from qpq_client._keys import ensure_key_packages
    from qpq_client._trust import resolve

    identity = Identity.generate()
    store = StateStore.open(home, "pw", create=True)
    with store.transaction() as tx:
        tx.set_identity(identity.secret_bytes(), username)
    conn = FakeConnection(server, identity.public_key)
    await conn.register_user(username)
    session = Session(store, MlsClient(identity), identity, username, conn)  # type: ignore[arg-type]
    await ensure_key_packages(session)
    for contact in contacts:
        await resolve(session, contact)
    return session
