"""GroupInfo facts: what members compare with the GroupInfo the server
serves, since a server cannot check the ``external_pub`` a committer signs."""

from __future__ import annotations

import pytest
from _tls import GroupInfo
from conftest import User, make_group_with_server

from qpq_core import (
    GroupInfoFacts,
    Identity,
    InvalidMlsMessageError,
    InvalidSignatureError,
    MalformedMlsMessageError,
    WrongEpochError,
    group_info_facts,
)


def test_members_and_the_server_derive_the_same_facts(alice: User, bob: User, carol: User) -> None:
    group_id, server = make_group_with_server(alice, bob, carol)
    bundle = bob.persist(bob.client.self_update(group_id))
    verified = server.commit(bundle)
    bob.persist(bob.client.merge_pending_commit(group_id))
    for user in (alice, carol):
        user.persist(user.client.process(bundle.commit))
    facts = group_info_facts(bundle.group_info)
    assert isinstance(facts, GroupInfoFacts)
    assert (facts.group_id, facts.epoch) == (group_id, 2)
    assert len(facts.digest) == len(facts.context_hash) == 32
    assert verified.group_info_facts.digest == facts.digest
    for user in (alice, bob, carol):
        assert user.client.group_info_facts(group_id).digest == facts.digest
    assert "digest=" in repr(facts)


def test_a_forged_external_pub_is_seen_by_members_and_replaced(
    alice: User, bob: User, carol: User
) -> None:
    group_id, server = make_group_with_server(alice, bob, carol)
    bundle = bob.persist(bob.client.self_update(group_id))
    bob_identity = bob.client.identity
    forged = (
        GroupInfo.parse(bundle.group_info).with_external_pub(b"\x07" * 32).serialize(bob_identity)
    )
    # The server cannot tell: it verifies everything else and keeps it.
    verified = server.verify(bundle.commit, forged)
    bob.persist(bob.client.merge_pending_commit(group_id))
    alice.persist(alice.client.process(bundle.commit))
    own = alice.client.group_info_facts(group_id)
    assert verified.group_info_facts.context_hash == own.context_hash
    assert verified.group_info_facts.digest != own.digest
    # Alice's own GroupInfo is accepted as the replacement, and matches.
    mine = alice.client.export_group_info(group_id)
    assert server.group.check_group_info(mine, alice.key).digest == own.digest
    # Offered as carol's, it is refused; so is the wrong epoch later.
    with pytest.raises(InvalidSignatureError):
        server.group.check_group_info(mine, carol.key)
    carol.persist(carol.client.process(bundle.commit))
    server.commit(carol.persist(carol.client.self_update(group_id)))
    with pytest.raises(WrongEpochError):
        server.group.check_group_info(mine, alice.key)


def test_what_is_not_a_group_info_with_external_pub_is_refused(alice: User) -> None:
    created = alice.persist(alice.client.create_group())
    parsed = GroupInfo.parse(created.group_info)
    stripped = GroupInfo(
        parsed.context,
        [e for e in parsed.extensions if e[0] != 4],
        parsed.confirmation_tag,
        parsed.signer,
    )
    with pytest.raises(InvalidMlsMessageError):
        group_info_facts(stripped.serialize(Identity.generate()))
    with pytest.raises(MalformedMlsMessageError):
        group_info_facts(b"\x00\x01\x00\x04not a group info")
