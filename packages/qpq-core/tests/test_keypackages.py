from __future__ import annotations

import hashlib
import time

import pytest
from _tls import KeyPackage
from conftest import User, make_group

import qpq_core.errors
import qpq_proto.errors
from qpq_core import (
    CIPHERSUITE_ID,
    DEFAULT_MAX_LIFETIME_SECONDS,
    Identity,
    InvalidKeyPackageError,
    InvalidMlsArgumentError,
    MalformedMlsMessageError,
    MlsClient,
    MlsError,
    NotAMemberError,
    UnsupportedCiphersuiteError,
    validate_key_package,
)


def test_batch_validates(alice: User) -> None:
    created = alice.client.create_key_packages(5, lifetime_seconds=7 * 24 * 3600)
    assert len(created.packages) == 5
    assert len(set(created.packages)) == 5
    # One private bundle per package lands in the change set.
    assert sum(k.startswith(b"KeyPackage") for k, _ in created.changes) == 5
    now = int(time.time())
    for package in created.packages:
        info = validate_key_package(package)
        assert info.identity_key == alice.key
        assert info.ciphersuite == CIPHERSUITE_ID == 1
        assert now + 7 * 24 * 3600 - 5 <= info.not_after <= now + 7 * 24 * 3600 + 5
        assert info.fingerprint == hashlib.sha256(package).digest()
        assert info.last_resort is False


def test_last_resort_is_marked_and_joins_once(alice: User, bob: User, carol: User) -> None:
    package = bob.key_package(last_resort=True)
    assert validate_key_package(package).last_resort is True
    # Members validate it on Add (the LastResort capability is listed); the
    # first join says it used the last-resort package and deletes its keys,
    # so that a Welcome made for it opens once (a server replaying an old
    # one cannot put bob back into a group he left): bob uploads a new one.
    welcomes = []
    for creator in (alice, carol):
        group_id = creator.persist(creator.client.create_group()).group_id
        bundle = creator.persist(creator.client.add_members(group_id, [package]))
        creator.persist(creator.client.merge_pending_commit(group_id))
        assert bundle.welcome is not None
        welcomes.append((group_id, bundle.welcome))
    joined = bob.persist(bob.client.join_from_welcome(welcomes[0][1]))
    assert joined.group_id == welcomes[0][0]
    assert joined.last_resort is True
    with pytest.raises(NotAMemberError):
        bob.client.join_from_welcome(welcomes[1][1])
    assert bob.client.group_ids() == (welcomes[0][0],)


def test_ordinary_key_package_is_consumed_by_join(alice: User, bob: User) -> None:
    package = bob.key_package()
    first = alice.persist(alice.client.create_group()).group_id
    bundle = alice.persist(alice.client.add_members(first, [package]))
    alice.persist(alice.client.merge_pending_commit(first))
    assert bundle.welcome is not None
    joined = bob.persist(bob.client.join_from_welcome(bundle.welcome))
    assert not any(k.startswith(b"KeyPackage") for k in bob.rows)
    assert any(k.startswith(b"KeyPackage") and v is None for k, v in joined.changes)


def test_expired_and_not_yet_valid(alice: User) -> None:
    package = alice.key_package()
    with pytest.raises(InvalidKeyPackageError):
        validate_key_package(package, now=int(time.time()) + 365 * 24 * 3600)
    with pytest.raises(InvalidKeyPackageError):
        validate_key_package(package, now=1_000_000)


def test_lifetime_range_over_the_maximum(alice: User) -> None:
    package = alice.key_package()
    with pytest.raises(InvalidKeyPackageError):
        validate_key_package(package, max_lifetime_seconds=24 * 3600)
    validate_key_package(package, max_lifetime_seconds=DEFAULT_MAX_LIFETIME_SECONDS)


def test_bad_arguments() -> None:
    client = MlsClient(Identity.generate())
    with pytest.raises(InvalidMlsArgumentError):
        client.create_key_packages(0)
    with pytest.raises(ValueError, match="lifetime_seconds"):
        client.create_key_packages(1, lifetime_seconds=200 * 24 * 3600)


def test_tampered_bytes_raise(alice: User) -> None:
    package = alice.key_package()
    for index in (10, len(package) // 2, len(package) - 1):
        tampered = bytearray(package)
        tampered[index] ^= 0x01
        with pytest.raises((MlsError, InvalidKeyPackageError, UnsupportedCiphersuiteError)):
            validate_key_package(bytes(tampered))
    with pytest.raises(InvalidKeyPackageError):
        # flip a bit inside the final signature: decodes, fails verification
        validate_key_package(package[:-5] + bytes([package[-5] ^ 1]) + package[-4:])
    with pytest.raises(MalformedMlsMessageError):
        validate_key_package(package + b"\x00")
    with pytest.raises(MalformedMlsMessageError):
        validate_key_package(package[:-1])


def test_a_group_message_is_not_a_key_package(alice: User, bob: User) -> None:
    group_id = make_group(alice, bob)
    with pytest.raises(MalformedMlsMessageError):
        validate_key_package(alice.client.encrypt(group_id, b"x").message)


def test_reserialized_key_package_still_validates(alice: User) -> None:
    """The crafting helper is faithful: re-signing an unchanged package
    gives the same bytes."""
    package = alice.key_package()
    assert KeyPackage.parse(package).serialize(alice.identity) == package


def test_other_ciphersuite_is_refused(alice: User) -> None:
    crafted = KeyPackage.parse(alice.key_package())
    crafted.ciphersuite = 0x0003  # X25519, ChaCha20Poly1305, SHA256, Ed25519
    with pytest.raises(UnsupportedCiphersuiteError):
        validate_key_package(crafted.serialize(alice.identity))


def test_credential_must_be_the_signature_key(alice: User) -> None:
    crafted = KeyPackage.parse(alice.key_package())
    crafted.identity = Identity.generate().public_key
    with pytest.raises(InvalidKeyPackageError, match="signature key"):
        validate_key_package(crafted.serialize(alice.identity))
    crafted.identity = alice.key[:31]
    with pytest.raises(InvalidKeyPackageError, match="32 bytes"):
        validate_key_package(crafted.serialize(alice.identity))


def test_signed_by_someone_else_is_refused(alice: User) -> None:
    crafted = KeyPackage.parse(alice.key_package())
    with pytest.raises(InvalidKeyPackageError):
        validate_key_package(crafted.serialize(Identity.generate()))


def test_key_package_errors_are_qpq_protos() -> None:
    """One class per meaning: the directory's wire error and qpq-core's are one."""
    assert InvalidKeyPackageError is qpq_proto.errors.InvalidKeyPackageError
    assert UnsupportedCiphersuiteError is qpq_proto.errors.UnsupportedCiphersuiteError
    assert qpq_core.errors.InvalidKeyPackageError is InvalidKeyPackageError
    assert qpq_core.errors.UnsupportedCiphersuiteError is UnsupportedCiphersuiteError


def test_validation_takes_bytes_like_input(alice: User) -> None:
    package = alice.key_package()
    info = validate_key_package(bytearray(package))  # type: ignore[arg-type]
    assert info.fingerprint == hashlib.sha256(package).digest()
    assert validate_key_package(memoryview(package)).identity_key == alice.key  # type: ignore[arg-type]


def test_members_refuse_crafted_packages(alice: User, bob: User) -> None:
    group_id = make_group(alice)
    crafted = KeyPackage.parse(bob.key_package())
    crafted.identity = Identity.generate().public_key
    before = alice.client.epoch(group_id)
    with pytest.raises(InvalidKeyPackageError):
        alice.client.add_members(group_id, [crafted.serialize(bob.identity)])
    assert alice.client.epoch(group_id) == before
    assert not alice.client.has_pending_commit(group_id)
