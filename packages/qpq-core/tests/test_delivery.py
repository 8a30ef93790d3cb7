"""The delivery service's side: DeliveryGroup follows a group through real
clients' commits, refuses what a member would refuse or what no member
sent, and changes nothing when it refuses."""

from __future__ import annotations

import pytest
from conftest import Server, User, make_group_with_server, secret

from qpq_core import (
    ApplicationMessage,
    CommitApplied,
    DeliveryGroup,
    Identity,
    InvalidMlsArgumentError,
    InvalidMlsMessageError,
    InvalidSignatureError,
    MalformedMlsMessageError,
    MlsError,
    NotAMemberError,
    ProposalVerified,
    StateCorruptError,
    WrongEpochError,
    WrongGroupError,
)


def refuse(server: Server, message: bytes, group_info: bytes | None, error: type[MlsError]) -> None:
    """`verify` raises `error`; rows and state are as before, and a server
    restarted from the rows holds the same state."""
    rows = dict(server.rows)
    state = server.state()
    with pytest.raises(error):
        server.group.verify(message, group_info)
    assert server.rows == rows
    assert server.state() == state
    restarted = DeliveryGroup.load(server.group.group_id, list(rows.items()))
    assert (restarted.epoch(), restarted.members(), restarted.ratchet_tree()) == state


def test_register_and_follow_a_group_through_restarts(alice: User, bob: User, carol: User) -> None:
    created = alice.persist(alice.client.create_group())
    server = Server(created.group_info)
    registered = server.registered
    assert (registered.group_id, registered.epoch) == (created.group_id, 0)
    assert registered.members == (alice.key,)
    assert registered.signer == alice.key
    assert server.group.group_id == created.group_id
    group_id = created.group_id

    bundle = alice.persist(
        alice.client.add_members(group_id, [bob.key_package(), carol.key_package()])
    )
    verified = server.commit(bundle)
    assert (verified.group_id, verified.epoch, verified.committer) == (group_id, 1, alice.key)
    assert verified.external is False
    assert verified.added == (bob.key, carol.key)
    assert verified.removed == verified.left == ()
    assert verified.members == (alice.key, bob.key, carol.key)
    alice.persist(alice.client.merge_pending_commit(group_id))
    assert bundle.welcome is not None
    for user in (bob, carol):
        user.persist(user.client.join_from_welcome(bundle.welcome))

    server.restart()
    update = bob.persist(bob.client.self_update(group_id))
    verified = server.commit(update)
    assert (verified.epoch, verified.committer, verified.added) == (2, bob.key, ())
    applied = bob.persist(bob.client.merge_pending_commit(group_id))
    assert (applied.committer, applied.external) == (bob.key, False)
    for user in (alice, carol):
        applied = user.persist(user.client.process(update.commit))
        assert isinstance(applied, CommitApplied)
        assert (applied.epoch, applied.committer) == (2, bob.key)

    # Carol leaves: her proposal is verified and kept for the commit that
    # covers it by reference.
    proposal = carol.persist(carol.client.leave(group_id)).proposal
    stored = server.verify(proposal)
    assert isinstance(stored, ProposalVerified)
    assert (stored.group_id, stored.epoch, stored.sender) == (group_id, 2, carol.key)
    server.restart()
    for user in (alice, bob):
        user.persist(user.client.process(proposal))
    commit = alice.persist(alice.client.commit_pending_proposals(group_id))
    verified = server.commit(commit)
    assert verified.removed == verified.left == (carol.key,)
    assert verified.members == (alice.key, bob.key)
    applied = alice.persist(alice.client.merge_pending_commit(group_id))
    assert applied.left == (carol.key,)
    for user in (bob, carol):
        applied = user.persist(user.client.process(commit.commit))
        assert isinstance(applied, CommitApplied)
        assert applied.left == applied.removed == (carol.key,)
    assert server.state()[:2] == (3, alice.client.members(group_id))


def test_refused_commits_change_nothing(alice: User, bob: User, carol: User) -> None:
    group_id, server = make_group_with_server(alice, bob, carol)
    # Two commits race for epoch 1; Bob's wins. Bob also made and dropped one
    # before: same signer and epoch, another tree.
    losing = alice.persist(alice.client.self_update(group_id))
    dropped = bob.persist(bob.client.self_update(group_id))
    bob.persist(bob.client.clear_pending_commit(group_id))
    winning = bob.persist(bob.client.self_update(group_id))
    this_epoch = bob.client.export_group_info(group_id)

    refuse(server, winning.commit, None, InvalidMlsMessageError)  # no GroupInfo
    refuse(server, winning.commit, dropped.group_info, InvalidMlsMessageError)  # another tree
    refuse(server, winning.commit, this_epoch, InvalidMlsMessageError)  # another epoch
    refuse(server, winning.commit, losing.group_info, InvalidSignatureError)  # not the committer's
    refuse(server, winning.commit, b"garbage", MalformedMlsMessageError)
    forged = bytearray(winning.commit)
    forged[-76] ^= 0x01  # in the signature, before the two 33-byte tags
    refuse(server, bytes(forged), winning.group_info, InvalidSignatureError)
    application = alice.persist(alice.client.encrypt(group_id, b"not for the server")).message
    refuse(server, application, None, InvalidMlsMessageError)
    refuse(server, b"\x00\x01garbage", None, MalformedMlsMessageError)
    refuse(server, alice.key_package(), None, InvalidMlsMessageError)
    proposal = carol.client.leave(group_id).proposal
    refuse(server, proposal, winning.group_info, InvalidMlsArgumentError)

    server.commit(winning)
    # The losing commit, and the winning one again: a past epoch.
    refuse(server, losing.commit, losing.group_info, WrongEpochError)
    refuse(server, winning.commit, winning.group_info, WrongEpochError)
    bob.persist(bob.client.merge_pending_commit(group_id))
    alice.persist(alice.client.clear_pending_commit(group_id))
    for user in (alice, carol):
        assert isinstance(user.persist(user.client.process(winning.commit)), CommitApplied)
    # A future epoch: Bob merges a commit the server never saw, commits again.
    unseen = bob.persist(bob.client.self_update(group_id))
    bob.persist(bob.client.merge_pending_commit(group_id))
    future = bob.persist(bob.client.self_update(group_id))
    refuse(server, future.commit, future.group_info, WrongEpochError)
    # Another group's commit.
    dave = User()
    other = dave.persist(dave.client.create_group()).group_id
    foreign = dave.persist(dave.client.self_update(other))
    refuse(server, foreign.commit, foreign.group_info, WrongGroupError)

    server.restart()
    assert server.commit(unseen).epoch == 3


def test_non_members_and_removed_members_cannot_commit(alice: User, bob: User, carol: User) -> None:
    group_id, server = make_group_with_server(alice, bob, carol)
    # Eve holds a group with the same id at the same epoch: her commit claims
    # leaf 0 (Alice's) and is signed by Eve.
    eve = User()
    eve.persist(eve.client.create_group(group_id))
    eve.persist(eve.client.self_update(group_id))
    eve.persist(eve.client.merge_pending_commit(group_id))
    fake = eve.persist(eve.client.self_update(group_id))
    assert fake.epoch == server.group.epoch() == 1
    refuse(server, fake.commit, fake.group_info, InvalidSignatureError)

    # Carol is removed (leaf 2). From a group of her own with the same id,
    # where she sits at leaf 2, she commits at the current epoch.
    removal = alice.persist(alice.client.remove_members(group_id, [carol.key]))
    server.commit(removal)
    alice.persist(alice.client.merge_pending_commit(group_id))
    bob.persist(bob.client.process(removal.commit))
    mallory, filler, carol_again = (
        User(),
        User(),
        User(Identity.from_secret_bytes(carol.identity.secret_bytes())),
    )
    mallory.persist(mallory.client.create_group(group_id))
    add = mallory.persist(
        mallory.client.add_members(group_id, [filler.key_package(), carol_again.key_package()])
    )
    mallory.persist(mallory.client.merge_pending_commit(group_id))
    assert add.welcome is not None
    carol_again.persist(carol_again.client.join_from_welcome(add.welcome))
    carol_again.persist(carol_again.client.self_update(group_id))
    carol_again.persist(carol_again.client.merge_pending_commit(group_id))
    stale = carol_again.persist(carol_again.client.self_update(group_id))
    assert stale.epoch == server.group.epoch() == 2
    refuse(server, stale.commit, stale.group_info, NotAMemberError)
    # The group goes on.
    update = bob.persist(bob.client.self_update(group_id))
    server.commit(update)


def test_a_member_who_fell_behind_rejoins(alice: User, bob: User, carol: User) -> None:
    group_id, server = make_group_with_server(alice, bob, carol)
    served = b""
    for _ in range(2):  # Carol misses two commits
        update = alice.persist(alice.client.self_update(group_id))
        server.commit(update)
        alice.persist(alice.client.merge_pending_commit(group_id))
        bob.persist(bob.client.process(update.commit))
        served = update.group_info
    assert carol.client.epoch(group_id) == 1

    rejoin = carol.persist(carol.client.rejoin(group_id, served, server.group.ratchet_tree()))
    assert (rejoin.group_id, rejoin.epoch, rejoin.welcome) == (group_id, 3, None)
    assert carol.client.has_pending_commit(group_id)
    with pytest.raises(MlsError, match="pending"):
        carol.client.encrypt(group_id, b"too early")

    # Bob commits first: the server refuses Carol's external commit; she
    # clears it (the group goes) and rejoins from the newer GroupInfo.
    racing = bob.persist(bob.client.self_update(group_id))
    server.commit(racing)
    bob.persist(bob.client.merge_pending_commit(group_id))
    alice.persist(alice.client.process(racing.commit))
    refuse(server, rejoin.commit, rejoin.group_info, WrongEpochError)
    carol.persist(carol.client.clear_pending_commit(group_id))
    assert carol.client.group_ids() == ()

    rejoin = carol.persist(carol.client.rejoin(group_id, racing.group_info, b""))
    verified = server.commit(rejoin)
    assert (verified.external, verified.committer) == (True, carol.key)
    assert verified.added == verified.removed == ()
    assert verified.members == alice.client.members(group_id)
    applied = carol.persist(carol.client.merge_pending_commit(group_id))
    assert (applied.epoch, applied.external, applied.committer) == (5, True, carol.key)
    for user in (alice, bob):
        applied = user.persist(user.client.process(rejoin.commit))
        assert isinstance(applied, CommitApplied)
        assert (applied.external, applied.committer, applied.removed) == (True, carol.key, ())
    carol.restart()
    assert secret(alice, group_id) == secret(bob, group_id) == secret(carol, group_id)
    for sender, receivers in ((carol, (alice, bob)), (alice, (bob, carol))):
        message = sender.persist(sender.client.encrypt(group_id, b"together again")).message
        for receiver in receivers:
            result = receiver.persist(receiver.client.process(message))
            assert isinstance(result, ApplicationMessage)
            assert result.plaintext == b"together again"


def test_rejoin_refusals_change_nothing(alice: User, bob: User) -> None:
    group_id, server = make_group_with_server(alice, bob)
    group_info = alice.client.export_group_info(group_id)
    stranger = User()
    with pytest.raises(NotAMemberError):
        stranger.client.rejoin(group_id, group_info, b"")
    with pytest.raises(WrongGroupError):
        bob.client.rejoin(b"another group", group_info, b"")
    with pytest.raises(MalformedMlsMessageError):
        bob.client.rejoin(group_id, b"garbage", b"")
    with pytest.raises(MalformedMlsMessageError):
        bob.client.rejoin(group_id, bob.key_package(), b"")
    assert stranger.client.group_ids() == ()
    assert bob.client.epoch(group_id) == 1
    assert not bob.client.has_pending_commit(group_id)
    assert server.state()[0] == 1


def test_load_and_create_refuse_what_holds_no_group(alice: User) -> None:
    created = alice.persist(alice.client.create_group())
    server = Server(created.group_info)
    with pytest.raises(StateCorruptError):
        DeliveryGroup.load(b"another group", list(server.rows.items()))
    with pytest.raises(StateCorruptError):
        DeliveryGroup.load(created.group_id, [])
    with pytest.raises(MalformedMlsMessageError):
        DeliveryGroup.create(alice.key_package())
    with pytest.raises(MalformedMlsMessageError):
        DeliveryGroup.create(b"\x00" * 10)


def test_export_group_info_registers_a_group_later(alice: User, bob: User) -> None:
    # The group's creation never reached the server: register it from the
    # current epoch's GroupInfo, and go on.
    group_id = alice.persist(alice.client.create_group()).group_id
    bundle = alice.persist(alice.client.add_members(group_id, [bob.key_package()]))
    alice.persist(alice.client.merge_pending_commit(group_id))
    assert bundle.welcome is not None
    bob.persist(bob.client.join_from_welcome(bundle.welcome))
    server = Server(alice.client.export_group_info(group_id))
    assert (server.registered.epoch, server.registered.members) == (1, (alice.key, bob.key))
    update = bob.persist(bob.client.self_update(group_id))
    assert server.commit(update).epoch == 2
