"""Group life cycles as people live them, through the library against a real server.

Each step is what one `qpq` command does (open the profile, connect, act),
run in process: the flows test the messenger's logic, and test_e2e_cli.py
proves the command's wiring on top. What a person would read is compared
in the shape `qpq recv` prints it (conftest.seen).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import (
    PASSPHRASE,
    MakeClient,
    create_profile,
    lagging,
    listed,
    receive_until,
    seen,
)

from qpq_client import (
    Client,
    GroupExistsError,
    NotAMemberError,
    ServerAddress,
    UnknownGroupError,
)
from qpq_proto.errors import EpochConflictError
from qpq_server.testing import RunningServer, start_server

pytestmark = pytest.mark.slow


async def members(client: Client, group: str) -> list[str]:
    return sorted(await client.members(group))


async def contacts_of(owner: Client, *others: Client) -> None:
    """``others`` pin ``owner``: its invitations are then joined, not held."""
    for other in others:
        await other.add_contact(owner.username)


async def test_classic_flow_both_directions(make_client: MakeClient) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    a, b = alice.username, bob.username
    await contacts_of(alice, bob)
    await alice.create_group("friends")
    assert await alice.invite("friends", [b]) == [b]
    assert (await receive_until(bob, f"you joined (invited by {a})"))[0] == (
        f"[friends] * you joined (invited by {a})"
    )
    await bob.send("friends", "hi alice")
    assert f"[friends] {b}: hi alice" in await receive_until(alice, f"{b}: hi alice")
    await alice.send("friends", "hi bob")
    assert f"[friends] {a}: hi bob" in await receive_until(bob, f"{a}: hi bob")
    assert await members(alice, "friends") == await members(bob, "friends") == sorted([a, b])
    history = [f"{e.sender}: {e.body}" for e in bob.history("friends")]
    assert history.index(f"{a}: hi bob") > history.index(f"{b}: hi alice")


async def test_three_members_all_directions_then_removal(make_client: MakeClient) -> None:
    alice, bob, carol = [await make_client(n) for n in ("alice", "bob", "carol")]
    a, b, c = alice.username, bob.username, carol.username
    await contacts_of(alice, bob, carol)
    await alice.create_group("team")
    await alice.invite("team", [b, c])
    await receive_until(bob, "you joined")
    await receive_until(carol, "you joined")
    for sender, others in ((alice, (bob, carol)), (bob, (alice, carol)), (carol, (alice, bob))):
        await sender.send("team", f"from {sender.username}")
        for other in others:
            await receive_until(other, f"{sender.username}: from {sender.username}")

    await alice.remove("team", [b])
    assert f"[team] * you were removed by {a}" in await receive_until(bob, "removed")
    await receive_until(carol, f"{a} removed {b}")
    await alice.send("team", "bob cannot read this")
    await receive_until(carol, "bob cannot read this")
    # The publish was answered after its fan-out committed: had it been
    # queued for bob, this fetch would find it.
    assert await bob.receive() == []
    assert "bob cannot read this" not in [e.body for e in bob.history("team")]
    assert listed(bob) == ["team (removed): "]
    with pytest.raises(NotAMemberError) as refused:
        await bob.send("team", "let me in")
    assert str(refused.value) == "you are no longer a member of 'team' (removed)"
    assert await members(alice, "team") == await members(carol, "team") == sorted([a, c])


def epoch_of(client: Client, group: str) -> int | None:
    (info,) = (g for g in client.groups() if g.name == group)
    return info.epoch


async def test_update_then_leave_and_the_others_talk_on(make_client: MakeClient) -> None:
    alice, bob, carol = [await make_client(n) for n in ("alice", "bob", "carol")]
    a, b, c = alice.username, bob.username, carol.username
    await contacts_of(alice, bob, carol)
    await alice.create_group("team")
    await alice.invite("team", [b, c])
    await receive_until(bob, "you joined")
    await receive_until(carol, "you joined")
    updated = await bob.update("team")
    assert updated.epoch == 2  # created at 0, invite made it 1
    for client in (alice, carol):
        assert await client.receive() == []  # processed; a key update is not news
    assert [epoch_of(u, "team") for u in (alice, carol)] == [2, 2]

    await carol.leave("team")
    # Alice's client commits carol's leave proposal as it receives it.
    assert seen(await alice.receive()) == [f"[team] * {c} left"]
    assert seen(await carol.receive()) == ["[team] * you left"]
    assert seen(await bob.receive()) == [f"[team] * {c} left"]
    with pytest.raises(NotAMemberError) as refused:
        await carol.send("team", "one more thing")
    assert str(refused.value) == "you are no longer a member of 'team' (left)"
    assert listed(carol) == ["team (left): "]
    await alice.send("team", "just us now")
    await receive_until(bob, f"{a}: just us now")
    await bob.send("team", "indeed")
    await receive_until(alice, f"{b}: indeed")
    assert await members(alice, "team") == await members(bob, "team") == sorted([a, b])


async def test_offline_member_receives_everything_later_in_order(
    make_client: MakeClient,
) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    a, b = alice.username, bob.username
    await contacts_of(alice, bob)
    home = bob.home
    await bob.close()  # bob is offline from here on
    await alice.create_group("news")
    await alice.invite("news", [b])
    for n in range(5):
        await alice.send("news", f"message {n}")
    bob = Client.open(home, PASSPHRASE)
    try:
        await bob.connect()
        lines = await receive_until(bob, "message 4")
    finally:
        await bob.close()
    texts = [line for line in lines if f"{a}: message" in line]
    assert texts == [f"[news] {a}: message {n}" for n in range(5)]


async def test_server_restart_mid_conversation(server: RunningServer, tmp_path: Path) -> None:
    alice = await create_profile(tmp_path / "alice", PASSPHRASE, "alice", server)
    bob = await create_profile(tmp_path / "bob", PASSPHRASE, "bob", server)
    try:
        await bob.add_contact("alice")
        await alice.create_group("ops")
        await alice.invite("ops", ["bob"])
        await receive_until(bob, "you joined")
        await alice.send("ops", "before restart")
    finally:
        await alice.close()
        await bob.close()
    assert server.stop() == 0
    run_dir = tmp_path / "restart"
    run_dir.mkdir()
    again = start_server(run_dir, data_dir=server.data_dir)
    try:
        assert again.fingerprint == server.fingerprint
        # A new port; the state and the queues stay.
        moved = ServerAddress(again.host, again.port)
        alice, bob = (Client.open(tmp_path / n, PASSPHRASE) for n in ("alice", "bob"))
        try:
            await alice.connect(server=moved)
            await bob.connect(server=moved)
            await receive_until(bob, "alice: before restart")
            await bob.send("ops", "after restart")
            await receive_until(alice, "bob: after restart")
        finally:
            await alice.close()
            await bob.close()
    finally:
        again.stop()


async def test_two_members_committing_at_once_end_in_one_group(make_client: MakeClient) -> None:
    alice, bob, carol, dave = [await make_client(n) for n in ("alice", "bob", "carol", "dave")]
    a, b, c, d = (x.username for x in (alice, bob, carol, dave))
    await contacts_of(alice, bob, carol)
    await contacts_of(bob, dave)
    await alice.create_group("race")
    await alice.invite("race", [b])
    await receive_until(bob, "you joined")
    # Both invite for the same epoch: bob has not seen alice's commit when
    # he makes his, so his loses at the server; he processes hers and
    # commits again on top of it.
    assert await alice.invite("race", [c]) == [c]
    with lagging(bob) as published:
        assert await bob.invite("race", [d]) == [d]
    refused, *accepted = published
    assert isinstance(refused, EpochConflictError)
    # His commit again on the new epoch, then the group's name to dave.
    assert len(accepted) == 2
    assert all(outcome is None for outcome in accepted)
    await receive_until(carol, "you joined")
    await receive_until(dave, "you joined")
    everyone = sorted([a, b, c, d])
    for client in (alice, bob, carol, dave):
        (group,) = client.groups()
        assert await members(client, group.name) == everyone
    carol_group = carol.groups()[0].name
    await carol.send(carol_group, "hello racers")
    for client in (alice, bob, dave):
        await receive_until(client, f"{c}: hello racers")


async def test_a_group_is_renamed_here_and_a_name_clash_is_said(make_client: MakeClient) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    a = alice.username
    await contacts_of(alice, bob)
    # Bob has a group called "project" already; alice's is called that too.
    await bob.create_group("project")
    await alice.create_group("project")
    await alice.invite("project", [bob.username])
    lines = await receive_until(bob, "that name is taken here")
    assert (
        "[project-2] * its members call this group project; that name is taken here,"
        " so it is project-2 (qpq group rename project-2 NEW)"
    ) in lines
    renamed = await bob.rename_group("project-2", "alices project")
    assert (renamed.name, renamed.status) == ("alices project", "active")
    assert sorted(g.name for g in bob.groups()) == ["alices project", "project"]
    with pytest.raises(GroupExistsError, match="you already have a group named 'project'"):
        await bob.rename_group("alices project", "project")
    with pytest.raises(UnknownGroupError):
        await bob.rename_group("project-2", "x")
    # The name is ours: alice's messages arrive under it, hers stays "project".
    await alice.send("project", "still here")
    assert f"[alices project] {a}: still here" in await receive_until(bob, "still here")
    assert [g.name for g in alice.groups()] == ["project"]
