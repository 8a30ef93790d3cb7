from __future__ import annotations

import pytest
from conftest import User, make_group, secret

from qpq_core import (
    ApplicationMessage,
    CommitApplied,
    CommitConflictError,
    DecryptionError,
    InvalidMlsArgumentError,
    MalformedMlsMessageError,
    MlsError,
    NoPendingCommitError,
    NotAMemberError,
    OwnMessage,
    PendingProposalsError,
    ProposalStored,
    ReplayedMessageError,
    UnsupportedCiphersuiteError,
    WrongEpochError,
    WrongGroupError,
)


def send(sender: User, group_id: bytes, text: bytes, *receivers: User) -> None:
    message = sender.persist(sender.client.encrypt(group_id, text)).message
    for receiver in receivers:
        result = receiver.persist(receiver.client.process(message))
        assert isinstance(result, ApplicationMessage)
        assert (result.plaintext, result.sender, result.group_id) == (text, sender.key, group_id)


def test_two_members_talk_both_ways(alice: User, bob: User) -> None:
    group_id = make_group(alice, bob)
    assert alice.client.members(group_id) == bob.client.members(group_id) == (alice.key, bob.key)
    assert alice.client.epoch(group_id) == bob.client.epoch(group_id) == 1
    assert secret(alice, group_id) == secret(bob, group_id)
    for i in range(3):
        send(alice, group_id, b"hello bob %d" % i, bob)
        send(bob, group_id, b"hello alice %d" % i, alice)
    assert alice.client.group_ids() == bob.client.group_ids() == (group_id,)


def test_add_reports_the_commit_epoch_and_pending_state(alice: User, bob: User) -> None:
    group_id = alice.persist(alice.client.create_group(b"team")).group_id
    assert group_id == b"team"
    bundle = alice.persist(alice.client.add_members(group_id, [bob.key_package()]))
    assert bundle.epoch == 0
    assert bundle.welcome is not None
    assert alice.client.has_pending_commit(group_id)
    with pytest.raises(CommitConflictError):
        alice.client.self_update(group_id)
    applied = alice.persist(alice.client.merge_pending_commit(group_id))
    assert (applied.epoch, applied.added, applied.removed) == (1, (bob.key,), ())
    assert (applied.committer, applied.external, applied.left) == (alice.key, False, ())
    with pytest.raises(NoPendingCommitError):
        alice.client.merge_pending_commit(group_id)


def test_three_members_add_remove(alice: User, bob: User, carol: User) -> None:
    group_id = make_group(alice, bob)
    bundle = alice.persist(alice.client.add_members(group_id, [carol.key_package()]))
    alice.persist(alice.client.merge_pending_commit(group_id))
    applied = bob.persist(bob.client.process(bundle.commit))
    assert isinstance(applied, CommitApplied)
    assert (applied.epoch, applied.added, applied.self_removed) == (2, (carol.key,), False)
    assert (applied.committer, applied.external) == (alice.key, False)
    assert bundle.welcome is not None
    joined = carol.persist(carol.client.join_from_welcome(bundle.welcome))
    assert joined.members == (alice.key, bob.key, carol.key)
    assert joined.epoch == 2
    send(carol, group_id, b"hi all", alice, bob)
    send(bob, group_id, b"hi carol", alice, carol)

    # Bob removes Carol; she processes the commit and is out.
    removal = bob.persist(bob.client.remove_members(group_id, [carol.key]))
    bob.persist(bob.client.merge_pending_commit(group_id))
    for user in (alice, carol):
        applied = user.persist(user.client.process(removal.commit))
        assert isinstance(applied, CommitApplied)
        assert applied.removed == (carol.key,)
        assert applied.left == ()  # removed by Bob, not by her own proposal
        assert applied.committer == bob.key
        assert applied.epoch == 3
        assert applied.self_removed is (user is carol)
    assert carol.client.group_ids() == ()
    assert alice.client.members(group_id) == (alice.key, bob.key)
    # Nothing sent after the removal is readable by Carol.
    after = alice.persist(alice.client.encrypt(group_id, b"carol cannot read this")).message
    with pytest.raises(WrongGroupError):
        carol.client.process(after)
    assert not carol.rows or not any(group_id in k for k in carol.rows)
    send(alice, group_id, b"still fine", bob)


def test_removed_member_without_processing_cannot_decrypt(
    alice: User, bob: User, carol: User
) -> None:
    group_id = make_group(alice, bob, carol)
    removal = alice.persist(alice.client.remove_members(group_id, [carol.key]))
    alice.persist(alice.client.merge_pending_commit(group_id))
    bob.persist(bob.client.process(removal.commit))
    message = alice.client.encrypt(group_id, b"secret").message
    with pytest.raises(WrongEpochError):
        carol.client.process(message)


def test_remove_unknown_or_self(alice: User, bob: User) -> None:
    group_id = make_group(alice, bob)
    with pytest.raises(NotAMemberError):
        alice.client.remove_members(group_id, [User().key])
    with pytest.raises(InvalidMlsArgumentError):
        alice.client.remove_members(group_id, [alice.key])
    with pytest.raises(InvalidMlsArgumentError):
        alice.client.remove_members(group_id, [])
    assert not alice.client.has_pending_commit(group_id)


def test_self_update_changes_epoch_and_keys(alice: User, bob: User) -> None:
    group_id = make_group(alice, bob)
    before = secret(alice, group_id)
    update = bob.persist(bob.client.self_update(group_id))
    assert update.welcome is None
    assert update.epoch == 1
    bob.persist(bob.client.merge_pending_commit(group_id))
    applied = alice.persist(alice.client.process(update.commit))
    assert isinstance(applied, CommitApplied)
    assert applied.epoch == 2
    assert applied.added == applied.removed == ()
    assert secret(alice, group_id) == secret(bob, group_id) != before
    send(alice, group_id, b"after update", bob)


def test_leave(alice: User, bob: User, carol: User) -> None:
    group_id = make_group(alice, bob, carol)
    proposal = carol.persist(carol.client.leave(group_id)).proposal
    with pytest.raises(PendingProposalsError):
        carol.client.encrypt(group_id, b"blocked while leaving")
    for user in (alice, bob):
        stored = user.persist(user.client.process(proposal))
        assert isinstance(stored, ProposalStored)
        assert (stored.sender, stored.epoch) == (carol.key, 1)
        assert user.client.has_pending_proposals(group_id)
    with pytest.raises(PendingProposalsError):
        alice.client.encrypt(group_id, b"commit first")
    bundle = alice.persist(alice.client.commit_pending_proposals(group_id))
    applied = alice.persist(alice.client.merge_pending_commit(group_id))
    assert applied.removed == applied.left == (carol.key,)
    assert not alice.client.has_pending_proposals(group_id)
    assert not any(k.startswith(b"QueuedProposal") for k in alice.rows)
    for user in (bob, carol):
        applied = user.persist(user.client.process(bundle.commit))
        assert isinstance(applied, CommitApplied)
        assert applied.removed == applied.left == (carol.key,)
        assert applied.self_removed is (user is carol)
    assert carol.client.group_ids() == ()
    send(bob, group_id, b"two of us", alice)


def test_rejected_commit_is_cleared_and_the_winner_processed(
    alice: User, bob: User, carol: User
) -> None:
    group_id = make_group(alice, bob, carol)
    losing = alice.persist(alice.client.self_update(group_id))
    winning = bob.persist(bob.client.self_update(group_id))
    bob.persist(bob.client.merge_pending_commit(group_id))
    assert losing.epoch == winning.epoch == 1  # the DS accepts one per epoch
    alice.persist(alice.client.clear_pending_commit(group_id))
    assert not alice.client.has_pending_commit(group_id)
    for user in (alice, carol):
        assert isinstance(user.persist(user.client.process(winning.commit)), CommitApplied)
    assert secret(alice, group_id) == secret(bob, group_id) == secret(carol, group_id)


def test_own_message_echo_is_ignored(alice: User, bob: User) -> None:
    group_id = make_group(alice, bob)
    message = alice.persist(alice.client.encrypt(group_id, b"echo")).message
    assert isinstance(alice.client.process(message), OwnMessage)


def test_late_message_from_a_past_epoch_still_decrypts(alice: User, bob: User) -> None:
    group_id = make_group(alice, bob)
    late = bob.persist(bob.client.encrypt(group_id, b"sent before the commit")).message
    update = alice.persist(alice.client.self_update(group_id))
    alice.persist(alice.client.merge_pending_commit(group_id))
    bob.persist(bob.client.process(update.commit))
    result = alice.client.process(late)
    assert isinstance(result, ApplicationMessage)
    assert result.epoch == 1


def _state(user: User, group_id: bytes) -> tuple[int, bytes, tuple[bytes, ...]]:
    return (user.client.epoch(group_id), secret(user, group_id), user.client.members(group_id))


def test_bad_messages_raise_typed_errors_and_change_nothing(
    alice: User, bob: User, carol: User
) -> None:
    group_id = make_group(alice, bob)
    other_group = make_group(carol, User())
    first = alice.persist(alice.client.encrypt(group_id, b"one")).message
    bob.persist(bob.client.process(first))
    update = alice.persist(alice.client.self_update(group_id))
    alice.persist(alice.client.merge_pending_commit(group_id))
    bob.persist(bob.client.process(update.commit))
    current = alice.persist(alice.client.encrypt(group_id, b"two")).message
    tampered = bytearray(current)
    tampered[-3] ^= 0x40
    truncated = current[:-10]
    foreign = carol.client.encrypt(other_group, b"not for bob").message

    cases: list[tuple[bytes, type[MlsError]]] = [
        (first, ReplayedMessageError),  # replay, previous epoch still retained
        (update.commit, WrongEpochError),  # the commit again
        (bytes(tampered), DecryptionError),
        (truncated, MalformedMlsMessageError),
        (foreign, WrongGroupError),
        (b"\x00\x01\x00\x02garbage", MalformedMlsMessageError),
        (alice.key_package(), MalformedMlsMessageError),
    ]
    for message, error in cases:
        before = _state(bob, group_id)
        rows = dict(bob.rows)
        with pytest.raises(error):
            bob.client.process(message)
        assert _state(bob, group_id) == before
        assert bob.rows == rows
    # The untouched message still decrypts after all of that.
    result = bob.persist(bob.client.process(current))
    assert isinstance(result, ApplicationMessage)
    assert result.plaintext == b"two"
    with pytest.raises(ReplayedMessageError):
        bob.client.process(current)


def test_unknown_group_operations(alice: User) -> None:
    for call in (
        lambda: alice.client.epoch(b"nope"),
        lambda: alice.client.encrypt(b"nope", b"x"),
        lambda: alice.client.self_update(b"nope"),
        lambda: alice.client.members(b"nope"),
    ):
        with pytest.raises(WrongGroupError):
            call()


def test_garbage_welcome_burns_no_key_package(alice: User, bob: User, carol: User) -> None:
    package = bob.key_package()
    rows = dict(bob.rows)
    group_id = make_group(alice)
    bundle = alice.client.add_members(group_id, [package])
    assert bundle.welcome is not None
    broken = bundle.welcome[:-40] + bytes(40)
    with pytest.raises((MlsError, UnsupportedCiphersuiteError)):
        bob.client.join_from_welcome(broken)
    assert bob.client.group_ids() == ()
    # The KeyPackage is still there: the real Welcome still works.
    alice.persist(bundle)
    alice.persist(alice.client.merge_pending_commit(group_id))
    assert bob.rows == rows
    bob.persist(bob.client.join_from_welcome(bundle.welcome))
    # A Welcome for someone else.
    with pytest.raises(NotAMemberError):
        carol.client.join_from_welcome(bundle.welcome)


def test_a_welcome_names_the_member_who_signed_it(alice: User, bob: User, carol: User) -> None:
    group_id = make_group(alice, bob)
    bundle = bob.persist(bob.client.add_members(group_id, [carol.key_package()]))
    bob.persist(bob.client.merge_pending_commit(group_id))
    assert bundle.welcome is not None
    joined = carol.persist(carol.client.join_from_welcome(bundle.welcome))
    # bob committed the add and signed the GroupInfo, not alice who created the group.
    assert joined.inviter == bob.key
    assert set(joined.members) == {alice.key, bob.key, carol.key}
