"""Keys pinned on first use, safety numbers, message requests and blocks.

Against the in-memory delivery service (fake_server.py), which here plays a
malicious server: it answers a username with another key, hands out another
identity's KeyPackage, or names a stranger after a pinned user.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from fake_server import FakeServer, make_session

from qpq_client import (
    InvitePolicy,
    KeyChangedError,
    KeyPackageMismatchError,
    NoInvitationError,
    _commits,
    _receive,
    _requests,
    _sending,
    _trust,
)
from qpq_client._rows import GroupStatus
from qpq_client._session import Session
from qpq_core import NotAMemberError


async def catch_up(session: Session) -> None:
    """What every client operation does first."""
    await _commits.flush_outbox(session)
    await _receive.sync(session)
    await _commits.settle(session)


def texts(session: Session) -> list[str]:
    return [row.body for row in session.store.history()]


def group_id(session: Session, name: str) -> bytes:
    group = session.store.group_by_name(name)
    assert group is not None
    return group.group_id


# ---- safety numbers -------------------------------------------------------


def test_safety_numbers_are_the_same_on_both_sides_and_differ_for_other_pairs() -> None:
    alice, bob, carol = bytes(32), bytes([1]) * 32, bytes([2]) * 32
    number = _trust.safety_number(alice, bob)
    assert number == _trust.safety_number(bob, alice)
    assert len(number) == 60
    assert number.isdigit()
    assert number != _trust.safety_number(alice, carol)
    assert number != _trust.safety_number(bob, carol)
    # Each half is one key's 30 digits, the smaller first: a fixed known answer,
    # so that two versions of the client keep showing the same number.
    assert number == ("179456526993149599442835270115" + "420875603901371164229584384599"), number


# ---- keys pinned on first use ---------------------------------------------


async def test_a_key_substituted_by_the_server_blocks_until_accepted(tmp_path: Path) -> None:
    server = FakeServer()
    alice = await make_session(server, tmp_path / "alice", "alice")
    bob = await make_session(server, tmp_path / "bob", "bob", contacts=("alice",))
    mallory = await make_session(server, tmp_path / "mallory", "mallory")
    await _commits.create_group(alice, "one")
    assert await _commits.invite(alice, "one", ("bob",)) == ["bob"]  # pins bob's key
    await _trust.mark_verified(alice, "bob")
    assert _trust.contact_named(alice.store, "bob").verified

    server.usernames["bob"] = mallory.me  # the server now answers "bob" with mallory's key
    await _commits.create_group(alice, "two")
    with pytest.raises(KeyChangedError, match="another identity key for bob"):
        await _commits.invite(alice, "two", ("bob",))
    with pytest.raises(KeyChangedError):  # and anything else that resolves the name
        await _commits.remove(alice, "one", ("bob",))
    with pytest.raises(KeyChangedError):
        await _trust.resolve(alice, "bob")
    (listed,) = [c for c in _trust.contacts(alice.store) if c.username == "bob"]
    assert (listed.identity_key, listed.key_changed, listed.new_key) == (bob.me, True, mallory.me)
    assert set(alice.mls.members(group_id(alice, "two"))) == {alice.me}  # nothing was sent

    accepted = _trust.accept_key(alice.store, "bob")
    assert (accepted.identity_key, accepted.key_changed, accepted.verified) == (
        mallory.me,
        False,
        False,  # a verification held for the old key only
    )
    assert await _commits.invite(alice, "two", ("bob",)) == ["bob"]
    assert mallory.me in alice.mls.members(group_id(alice, "two"))


async def test_a_keypackage_of_another_identity_is_refused(tmp_path: Path) -> None:
    server = FakeServer()
    alice = await make_session(server, tmp_path / "alice", "alice")
    bob = await make_session(server, tmp_path / "bob", "bob", contacts=("alice",))
    mallory = await make_session(server, tmp_path / "mallory", "mallory")
    # The server serves mallory's package when asked for one of bob's.
    server.key_packages[bob.me] = list(server.key_packages[mallory.me])
    await _commits.create_group(alice, "team")
    with pytest.raises(KeyPackageMismatchError, match="for bob; bob was not invited"):
        await _commits.invite(alice, "team", ("bob",))
    assert alice.mls.members(group_id(alice, "team")) == (alice.me,)
    assert alice.store.outbox() == []


async def test_a_member_named_after_a_pinned_user_is_shown_and_logged_as_such(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeServer()
    alice = await make_session(server, tmp_path / "alice", "alice")
    bob = await make_session(server, tmp_path / "bob", "bob", contacts=("alice",))
    carol = await make_session(server, tmp_path / "carol", "carol", contacts=("alice",))
    mallory = await make_session(server, tmp_path / "mallory", "mallory", contacts=("carol",))
    await _commits.create_group(alice, "team")
    await _commits.invite(alice, "team", ("bob", "carol"))
    for session in (bob, carol):
        await catch_up(session)
    await _commits.invite(carol, "team", ("mallory",))
    # The server names mallory "bob" to alice (its reverse lookup lies).
    server.usernames = {"bob": mallory.me, "alice": alice.me, "carol": carol.me}
    with caplog.at_level(logging.WARNING, logger="qpq_client"):
        await catch_up(alice)
    assert texts(alice)[-1] == "carol added bob (unpinned key)"
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "qpq_client"]
    assert warning.startswith(f"WARNING: the server says {mallory.me.hex()[:16]}… is bob")
    (listed,) = [c for c in _trust.contacts(alice.store) if c.username == "bob"]
    assert (listed.identity_key, listed.new_key) == (bob.me, mallory.me)


# ---- message requests ------------------------------------------------------


async def stranger_invites(
    tmp_path: Path, *, policy: InvitePolicy | None = None
) -> tuple[FakeServer, Session, Session, bytes]:
    """Alice (a stranger to bob) creates "friends", invites bob and says two things."""
    server = FakeServer()
    alice = await make_session(server, tmp_path / "alice", "alice")
    bob = await make_session(server, tmp_path / "bob", "bob")
    if policy is not None:
        bob.persist(lambda tx: _trust.set_invite_policy(tx, policy))
    await _commits.create_group(alice, "friends")
    await _commits.invite(alice, "friends", ("bob",))
    gid = group_id(alice, "friends")
    await _sending.send_text(alice, gid, "one")
    await _sending.send_text(alice, gid, "two")
    await catch_up(bob)
    return server, alice, bob, gid


async def test_an_invitation_from_a_stranger_waits_and_accepting_shows_what_was_held(
    tmp_path: Path,
) -> None:
    server, alice, bob, gid = await stranger_invites(tmp_path)
    placeholder = f"group-{gid.hex()[:8]}"
    assert [(g.name, g.status) for g in bob.store.groups()] == [
        (placeholder, GroupStatus.REQUESTED)
    ]
    assert [(r.kind, r.body) for r in bob.store.history()] == [
        ("request", f"alice invited you to {placeholder}")
    ]
    assert bob.mls.group_ids() == ()  # inspected, not joined
    assert server.queues[bob.me] == []  # acknowledged: held in the profile instead
    with pytest.raises(NotAMemberError, match="not accepted the invitation"):
        _commits.group_named(bob, placeholder)
    await _sending.send_text(alice, gid, "three")
    await catch_up(bob)

    # The KeyPackage the inspection used is still there: the Welcome opens.
    group = await _requests.accept(bob, placeholder)
    assert (group.name, group.status) == ("friends", GroupStatus.ACTIVE)  # the held name message
    assert texts(bob)[1:] == ["you joined (invited by alice)", "one", "two", "three"]
    assert bob.store.held(gid) == []
    assert _trust.is_trusted_inviter(bob.store, alice.me, (alice.me,))  # now a contact
    await _sending.send_text(bob, gid, "hi alice")
    await catch_up(alice)
    assert texts(alice)[-1] == "hi alice"
    with pytest.raises(NoInvitationError):
        await _requests.accept(bob, "friends")


async def test_declining_keeps_nothing_and_leaves_the_roster(tmp_path: Path) -> None:
    server, alice, bob, gid = await stranger_invites(tmp_path)
    placeholder = f"group-{gid.hex()[:8]}"
    await _requests.decline(bob, placeholder)
    await catch_up(alice)  # commits bob's leave proposal
    # Said before the leave: the commit that completes it adds no "bob left".
    assert texts(alice)[-1] == "bob declined the invitation"
    assert "bob left" not in texts(alice)
    assert set(alice.mls.members(gid)) == {alice.me}
    await catch_up(bob)  # the removal: the declined group is forgotten
    assert bob.store.groups() == []
    assert bob.store.history() == []
    await _sending.send_text(alice, gid, "after")
    await catch_up(bob)
    assert bob.store.history() == []
    assert server.queues[bob.me] == []


async def test_blocking_drops_the_request_and_everything_after(tmp_path: Path) -> None:
    server, alice, bob, _gid = await stranger_invites(tmp_path)
    carol = await make_session(server, tmp_path / "carol", "carol")
    await _trust.block(bob, "alice")
    assert bob.store.groups() == []
    assert bob.store.history() == []
    await _commits.create_group(alice, "again")
    await _commits.invite(alice, "again", ("bob",))
    await catch_up(bob)
    assert bob.store.groups() == []  # a blocked identity's Welcome is dropped
    assert server.queues[bob.me] == []

    # In a group with a contact, the blocked member's messages are not shown.
    await _trust.resolve(bob, "carol")
    await _trust.resolve(alice, "carol")
    await _commits.create_group(carol, "shared")
    await _commits.invite(carol, "shared", ("alice", "bob"))
    for session in (alice, bob):
        await catch_up(session)
    shared = group_id(carol, "shared")
    await _sending.send_text(alice, shared, "from alice")
    await _sending.send_text(carol, shared, "from carol")
    await catch_up(bob)
    bob_shared = bob.store.group_by_id(shared)
    assert bob_shared is not None
    assert bob_shared.status is GroupStatus.ACTIVE
    assert [r.body for r in bob.store.history(shared) if r.kind == "text"] == ["from carol"]
    assert server.queues[bob.me] == []

    _trust.unblock(bob.store, "alice")
    await _sending.send_text(alice, shared, "heard again")
    await catch_up(bob)
    assert [r.body for r in bob.store.history(shared)][-1] == "heard again"


async def test_under_the_anyone_policy_a_strangers_invitation_is_joined(tmp_path: Path) -> None:
    _server, _alice, bob, _gid = await stranger_invites(tmp_path, policy=InvitePolicy.ANYONE)
    assert [(g.name, g.status) for g in bob.store.groups()] == [("friends", GroupStatus.ACTIVE)]
    assert texts(bob) == ["you joined (invited by alice)", "one", "two"]


async def test_a_welcome_the_server_attributes_to_a_contact_counts_as_its_signers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeServer()
    alice = await make_session(server, tmp_path / "alice", "alice")
    bob = await make_session(server, tmp_path / "bob", "bob")
    mallory = await make_session(server, tmp_path / "mallory", "mallory")
    await _trust.resolve(bob, "alice")  # alice is bob's contact; mallory is not
    await _commits.create_group(mallory, "trap")
    await _commits.invite(mallory, "trap", ("bob",))
    # The server lies: mallory's Welcome reaches bob as if alice had sent it.
    queue = server.queues[bob.me]
    queue[:] = [
        dataclasses.replace(e, sender=alice.me) if e.sender == mallory.me else e for e in queue
    ]
    with caplog.at_level(logging.WARNING, logger="qpq_client"):
        await catch_up(bob)
    gid = group_id(mallory, "trap")
    placeholder = f"group-{gid.hex()[:8]}"
    assert [(g.name, g.status) for g in bob.store.groups()] == [
        (placeholder, GroupStatus.REQUESTED)
    ]
    assert [(r.kind, r.body) for r in bob.store.history()] == [
        ("request", f"mallory invited you to {placeholder}")
    ]
    assert bob.mls.group_ids() == ()
    assert any(
        "the server said alice sent an invitation that mallory signed" in r.getMessage()
        for r in caplog.records
    )
