"""Shared helpers: a user whose every change set lands in a dict, as a host
would persist it in one transaction, and the delivery service's state of a
group kept the same way."""

from __future__ import annotations

from typing import Protocol, TypeVar

import pytest

from qpq_core import (
    ChangeSet,
    CommitBundle,
    CommitVerified,
    DeliveryGroup,
    Identity,
    MlsClient,
    ProposalVerified,
    Suite,
    apply_changes,
)


class _HasChanges(Protocol):
    @property
    def changes(self) -> ChangeSet: ...


_R = TypeVar("_R", bound=_HasChanges)


class User:
    """An identity, its client and the rows persisted so far."""

    def __init__(self, identity: Identity | None = None) -> None:
        self.identity = identity or Identity.generate()
        self.rows: dict[bytes, bytes] = {}
        self.client = MlsClient(self.identity, self.rows.items())

    @property
    def key(self) -> bytes:
        return self.identity.public_key

    def persist(self, result: _R) -> _R:
        apply_changes(self.rows, result.changes)
        return result

    def key_package(self, *, last_resort: bool = False, suite: Suite = Suite.DEFAULT) -> bytes:
        created = self.persist(
            self.client.create_key_packages(1, last_resort=last_resort, suite=suite)
        )
        return created.packages[0]

    def restart(self) -> None:
        """A new process: restore identity and state from persisted rows."""
        identity = Identity.from_secret_bytes(self.identity.secret_bytes())
        self.client = MlsClient(identity, list(self.rows.items()))


def make_group(creator: User, *others: User) -> bytes:
    """Create a group and add everyone in one commit; all persisted."""
    group_id = creator.persist(creator.client.create_group()).group_id
    if others:
        bundle = creator.persist(
            creator.client.add_members(group_id, [u.key_package() for u in others])
        )
        creator.persist(creator.client.merge_pending_commit(group_id))
        assert bundle.welcome is not None
        for user in others:
            user.persist(user.client.join_from_welcome(bundle.welcome))
    return group_id


class Server:
    """The delivery service's state of one group and the rows it persisted."""

    def __init__(self, group_info: bytes) -> None:
        self.group, self.registered = DeliveryGroup.create(group_info)
        self.rows: dict[bytes, bytes] = {}
        apply_changes(self.rows, self.registered.changes)

    def verify(
        self, message: bytes, group_info: bytes | None = None
    ) -> ProposalVerified | CommitVerified:
        result = self.group.verify(message, group_info)
        apply_changes(self.rows, result.changes)
        return result

    def commit(self, bundle: CommitBundle) -> CommitVerified:
        result = self.verify(bundle.commit, bundle.group_info)
        assert isinstance(result, CommitVerified)
        return result

    def state(self) -> tuple[int, tuple[bytes, ...], bytes]:
        return (self.group.epoch(), self.group.members(), self.group.ratchet_tree())

    def restart(self) -> None:
        """A new server process: the group from the persisted rows."""
        self.group = DeliveryGroup.load(self.group.group_id, list(self.rows.items()))


def make_group_with_server(
    creator: User, *others: User, suite: Suite = Suite.DEFAULT
) -> tuple[bytes, Server]:
    """Like make_group, with the group registered and its commit verified."""
    created = creator.persist(creator.client.create_group(suite=suite))
    server = Server(created.group_info)
    bundle = creator.persist(
        creator.client.add_members(created.group_id, [u.key_package(suite=suite) for u in others])
    )
    server.commit(bundle)
    creator.persist(creator.client.merge_pending_commit(created.group_id))
    assert bundle.welcome is not None
    for user in others:
        user.persist(user.client.join_from_welcome(bundle.welcome))
    return created.group_id, server


def secret(user: User, group_id: bytes) -> bytes:
    return user.client.export_secret(group_id, "qpq test", b"", 32)


@pytest.fixture
def alice() -> User:
    return User()


@pytest.fixture
def bob() -> User:
    return User()


@pytest.fixture
def carol() -> User:
    return User()
