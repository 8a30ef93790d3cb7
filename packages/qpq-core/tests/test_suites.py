"""Both ciphersuites through the Python API: the X-Wing suite (0x004D) does
what the default does, a group's suite is fixed and readable, a KeyPackage
of the other suite is refused, and state the build before X-Wing persisted
(tests/fixtures/before_xwing.json) loads and goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import User, make_group_with_server, secret

import qpq_core
from qpq_core import (
    SUITES,
    ApplicationMessage,
    CommitApplied,
    DeliveryGroup,
    Identity,
    InvalidKeyPackageError,
    MlsClient,
    Suite,
    UnsupportedCiphersuiteError,
    validate_key_package,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "before_xwing.json"


def test_the_suites_and_their_labels() -> None:
    assert SUITES == (Suite.DEFAULT, Suite.XWING)
    assert Suite.XWING == 0x004D
    assert Suite.DEFAULT == qpq_core.CIPHERSUITE_ID
    assert [s.label for s in SUITES] == ["default", "pq"]
    assert Suite.from_label("pq") is Suite.XWING
    with pytest.raises(ValueError, match="choose one of: default, pq"):
        Suite.from_label("kyber")


def test_an_xwing_group_with_its_server(alice: User, bob: User, carol: User) -> None:
    group_id, server = make_group_with_server(alice, bob, carol, suite=Suite.XWING)
    for user in (alice, bob, carol):
        assert user.client.group_suite(group_id) is Suite.XWING
    assert server.group.suite() is Suite.XWING
    for sender, readers in ((alice, (bob, carol)), (bob, (alice, carol)), (carol, (alice, bob))):
        message = sender.persist(sender.client.encrypt(group_id, b"pq")).message
        for reader in readers:
            result = reader.persist(reader.client.process(message))
            assert isinstance(result, ApplicationMessage)
            assert result.plaintext == b"pq"
    bundle = alice.persist(alice.client.remove_members(group_id, [carol.key]))
    server.commit(bundle)
    alice.persist(alice.client.merge_pending_commit(group_id))
    assert isinstance(bob.persist(bob.client.process(bundle.commit)), CommitApplied)
    server.restart()
    bob.restart()
    assert server.group.suite() is Suite.XWING
    assert server.group.members() == (alice.key, bob.key)
    assert bob.client.group_suite(group_id) is Suite.XWING
    assert secret(alice, group_id) == secret(bob, group_id)


@pytest.mark.parametrize("suite", list(Suite))
def test_key_packages_say_their_suite(alice: User, suite: Suite) -> None:
    info = validate_key_package(alice.key_package(suite=suite))
    assert info.ciphersuite == suite
    assert info.identity_key == alice.key


def test_other_suites_are_refused(alice: User) -> None:
    with pytest.raises(UnsupportedCiphersuiteError, match="0x0002"):
        alice.client.create_key_packages(1, suite=2)
    with pytest.raises(UnsupportedCiphersuiteError, match="0x0003"):
        alice.client.create_group(suite=3)


@pytest.mark.parametrize(
    ("group_suite", "other"), [(Suite.DEFAULT, Suite.XWING), (Suite.XWING, Suite.DEFAULT)]
)
def test_a_key_package_of_the_other_suite_is_refused(
    alice: User, bob: User, group_suite: Suite, other: Suite
) -> None:
    group_id = alice.persist(alice.client.create_group(suite=group_suite)).group_id
    rows = dict(alice.rows)
    with pytest.raises(InvalidKeyPackageError, match="cannot join a group of"):
        alice.client.add_members(group_id, [bob.key_package(suite=other)])
    assert alice.rows == rows
    assert not alice.client.has_pending_commit(group_id)


def test_state_of_the_build_before_xwing_loads_and_goes_on() -> None:
    """Rows, messages and a delivery-service state persisted by the build
    before the X-Wing suite (commit 39e25e7): every client and the service
    load them, read what was in flight, and take the group to a new epoch."""
    data = json.loads(FIXTURE.read_text())
    group_id = bytes.fromhex(data["group_id"])

    def rows(name: str) -> dict[bytes, bytes]:
        return {bytes.fromhex(k): bytes.fromhex(v) for k, v in data["rows"][name]}

    users: dict[str, User] = {}
    for name in ("alice", "bob"):
        user = User(Identity.from_secret_bytes(bytes.fromhex(data["identities"][name])))
        user.rows = rows(name)
        user.client = MlsClient(user.identity, list(user.rows.items()))
        users[name] = user
    alice, bob = users["alice"], users["bob"]
    assert alice.client.group_suite(group_id) is Suite.DEFAULT
    for reader, key in ((alice, "to_alice"), (bob, "to_bob")):
        result = reader.persist(reader.client.process(bytes.fromhex(data[key])))
        assert isinstance(result, ApplicationMessage)
        assert result.plaintext == data[f"{key}_text"].encode()

    delivery = DeliveryGroup.load(group_id, list(rows("delivery").items()))
    assert delivery.suite() is Suite.DEFAULT
    assert delivery.members() == (alice.key, bob.key)
    dave = User()
    bundle = alice.persist(alice.client.add_members(group_id, [dave.key_package()]))
    delivery.verify(bundle.commit, bundle.group_info)
    alice.persist(alice.client.merge_pending_commit(group_id))
    assert isinstance(bob.persist(bob.client.process(bundle.commit)), CommitApplied)
    assert bundle.welcome is not None
    dave.persist(dave.client.join_from_welcome(bundle.welcome))
    assert delivery.members() == (alice.key, bob.key, dave.key)
    assert secret(alice, group_id) == secret(bob, group_id) == secret(dave, group_id)
