"""Results of MlsClient calls: the extension's frozen classes, exported by
qpq_core, whose reprs name the group and epoch but never a secret."""

from __future__ import annotations

import pytest
from conftest import User, make_group

import qpq_core
from qpq_core import (
    ApplicationMessage,
    Cleared,
    CommitApplied,
    CommitBundle,
    CommitVerified,
    DeliveryGroup,
    Encrypted,
    GroupCreated,
    GroupRegistered,
    Joined,
    KeyPackagesCreated,
    OwnMessage,
    ProposalCreated,
    ProposalStored,
    ProposalVerified,
)

SECRET_FIELDS = (
    "changes", "plaintext", "commit", "welcome", "group_info", "packages", "message", "proposal",
)  # fmt: skip


def _one_of_each(alice: User, bob: User, carol: User) -> list[object]:
    created = carol.client.create_key_packages(1)
    carol.persist(created)
    group = alice.persist(alice.client.create_group(b"results-group"))
    server, registered = DeliveryGroup.create(group.group_info)
    bundle = alice.persist(alice.client.add_members(group.group_id, [bob.key_package()]))
    verified = server.verify(bundle.commit, bundle.group_info)
    merged = alice.persist(alice.client.merge_pending_commit(group.group_id))
    assert bundle.welcome is not None
    joined = bob.persist(bob.client.join_from_welcome(bundle.welcome))
    encrypted = alice.persist(alice.client.encrypt(group.group_id, b"very secret text"))
    received = bob.persist(bob.client.process(encrypted.message))
    own = alice.client.process(encrypted.message)
    update = bob.persist(bob.client.self_update(group.group_id))
    cleared = bob.persist(bob.client.clear_pending_commit(group.group_id))
    proposal = bob.persist(bob.client.leave(group.group_id))
    stored = alice.persist(alice.client.process(proposal.proposal))
    kept = server.verify(proposal.proposal)
    return [
        created, group, bundle, merged, joined, encrypted, received, own, update, cleared,
        proposal, stored, registered, verified, kept,
    ]  # fmt: skip


def test_each_call_returns_its_public_class(alice: User, bob: User, carol: User) -> None:
    results = _one_of_each(alice, bob, carol)
    expected = [
        KeyPackagesCreated, GroupCreated, CommitBundle, CommitApplied, Joined, Encrypted,
        ApplicationMessage, OwnMessage, CommitBundle, Cleared, ProposalCreated, ProposalStored,
        GroupRegistered, CommitVerified, ProposalVerified,
    ]  # fmt: skip
    assert [type(r) for r in results] == expected
    for cls in [*expected, DeliveryGroup]:
        assert getattr(qpq_core, cls.__name__) is cls
        assert cls.__name__ in qpq_core.__all__


def test_result_attributes_have_the_documented_types(alice: User, bob: User) -> None:
    group_id = make_group(alice, bob)
    bundle = alice.client.self_update(group_id)
    assert isinstance(bundle.commit, bytes)
    assert isinstance(bundle.group_info, bytes)
    assert bundle.welcome is None
    assert isinstance(bundle.epoch, int)
    assert isinstance(bundle.changes, tuple)
    for key, value in bundle.changes:
        assert isinstance(key, bytes)
        assert value is None or isinstance(value, bytes)
    applied = alice.client.merge_pending_commit(group_id)
    assert (applied.group_id, applied.epoch, applied.self_removed) == (group_id, 2, False)
    assert (applied.committer, applied.external) == (alice.key, False)
    assert applied.added == applied.removed == applied.left == ()
    created = bob.client.create_key_packages(2)
    assert isinstance(created.packages, tuple)
    assert all(isinstance(p, bytes) for p in created.packages)


def test_reprs_name_the_group_never_a_secret(alice: User, bob: User, carol: User) -> None:
    for result in _one_of_each(alice, bob, carol):
        text = repr(result) + str(result)
        assert text.startswith(type(result).__name__ + "(")
        group_id = getattr(result, "group_id", None)
        if group_id is not None:
            assert group_id.hex()[:16] in text
        for name in SECRET_FIELDS:
            value = getattr(result, name, None)
            if value is None:
                continue
            if name == "changes":
                # A row of a few bytes (an epoch counter like b"0") is no secret,
                # and its hex turns up in any key by chance: check the real ones.
                rows = [row[:16] for _, row in value if row is not None and len(row) >= 8]
                assert all(row.hex() not in text and repr(row) not in text for row in rows)
            elif name == "packages":
                assert all(p[-16:].hex() not in text for p in value)
            else:
                assert value[-16:].hex() not in text
                assert repr(value[-16:])[2:-1] not in text
        assert "very secret text" not in text


def test_repr_examples(alice: User, bob: User) -> None:
    group = alice.client.create_group(b"\x01\x02\x03")
    assert repr(group) == "GroupCreated(group_id=010203)"
    long_id = alice.client.create_group(bytes(range(16)))
    assert repr(long_id) == "GroupCreated(group_id=0001020304050607…)"
    server, registered = DeliveryGroup.create(group.group_info)
    alice_hex = alice.key[:8].hex() + "…"
    assert repr(server) == "DeliveryGroup(group_id=010203)"
    assert repr(registered) == (
        f"GroupRegistered(group_id=010203, epoch=0, members=1, signer={alice_hex})"
    )
    bundle = alice.client.add_members(b"\x01\x02\x03", [bob.key_package()])
    assert repr(bundle) == "CommitBundle(group_id=010203, epoch=0, has_welcome=True)"
    verified = server.verify(bundle.commit, bundle.group_info)
    assert repr(verified) == (
        f"CommitVerified(group_id=010203, epoch=1, committer={alice_hex}, external=False, "
        "added=1, removed=0, left=0, members=2)"
    )
    applied = alice.client.merge_pending_commit(b"\x01\x02\x03")
    assert repr(applied) == (
        f"CommitApplied(group_id=010203, epoch=1, committer={alice_hex}, external=False, "
        "added=1, removed=0, left=0, self_removed=False)"
    )
    assert repr(bob.client.create_key_packages(3)) == "KeyPackagesCreated(count=3)"


def test_results_are_frozen(alice: User) -> None:
    created = alice.client.create_group()
    with pytest.raises(AttributeError):
        created.group_id = b"other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        created.extra = 1  # type: ignore[attr-defined]


def test_client_repr_names_the_identity_only(alice: User) -> None:
    assert alice.client.identity is alice.identity
    assert repr(alice.client) == f"MlsClient({alice.identity!r})"
    assert alice.identity.secret_bytes().hex() not in repr(alice.client)
