"""Group integrity against hostile members and a lying server (issue 20).

Real clients (the library) on a real server; the attackers are real members
too, who build what the server cannot tell apart from an honest message out
of their own MLS state (hostile_mls.py): a commit with a broken membership
tag or with garbage path secrets, a GroupInfo naming an external key of
their choosing, a Welcome into a fake state of a group id, a message sent
directly after their removal. After each attack every honest member is at
the server's epoch, can send and receive, and removes the attacker; nothing
sent after the recovery is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSPHRASE, MakeClient, lagging
from hostile_mls import (
    membership_key,
    with_broken_membership_tag,
    with_external_pub,
    with_garbage_path,
)

from qpq_client import Client, GroupStatus, HistoryEntry, ServerAddress, Trust, _keys, _receive
from qpq_client._plaintext import encode_text
from qpq_client.cli._render import entry_json, entry_line
from qpq_core import CommitBundle, MlsClient, MlsMessageKind, group_info_facts, peek_message
from qpq_p2p import PeerConfig
from qpq_proto import NO_SENDER, Envelope, GroupSnapshot, MessageKind
from qpq_proto.errors import ConnectionFailedError, ForbiddenError
from qpq_server.testing import RunningServer, start_server

pytestmark = pytest.mark.slow

TEAM = "team"
EXPORTER = "qpq integrity test"
#: Rounds of "everyone processes what is queued" before a group must have converged.
ROUNDS = 8

#: Makes the commit an attacker publishes from its real one: (bundle, the
#: current epoch's GroupInfo, the epoch's membership key) -> (commit, GroupInfo).
Hostile = Callable[[Client, CommitBundle, bytes, bytes], tuple[bytes, bytes]]


# ---- the group and what the members see ---------------------------------------


async def team(make_client: MakeClient, *names: str) -> tuple[list[Client], bytes]:
    """``names`` in one group "team", made by the first; everyone joined."""
    owner, *others = [await make_client(name) for name in names]
    for other in others:
        await other.add_contact(owner.username)
    await owner.create_group(TEAM)
    await owner.invite(TEAM, [other.username for other in others])
    for other in others:
        await until_shown(other, "you joined")
    (group,) = owner.groups()
    return [owner, *others], group.group_id


async def until_shown(client: Client, *expected: str) -> list[str]:
    """Receive until every expected text was shown (bounded waits, no sleeps)."""
    seen: list[str] = []
    for _ in range(ROUNDS):
        seen += [entry.body for entry in await client.receive(wait=5)]
        if all(any(e in line for line in seen) for e in expected):
            return seen
    raise AssertionError(f"{client.username} never saw {expected}; saw {seen}")


def lines(client: Client, group: str = TEAM) -> list[str]:
    return [entry.body for entry in client.history(group)]


def exporter(client: Client, group_id: bytes) -> bytes:
    return client._mls.export_secret(group_id, EXPORTER, b"", 32)


async def server_epoch(client: Client, group_id: bytes) -> int:
    session = client._session
    assert session is not None
    return (await session.conn.fetch_group_info(group_id)).epoch


async def converge(clients: Iterable[Client], group_id: bytes) -> int:
    """Everyone processes what is queued until all are at the server's epoch
    with one exporter secret; returns that epoch."""
    members = list(clients)
    for _ in range(ROUNDS):
        for client in members:
            await client.receive()
        epoch = await server_epoch(members[0], group_id)
        if {c._mls.epoch(group_id) for c in members} == {epoch} and not any(
            g.needs_rejoin for c in members for g in c._store.groups()
        ):
            assert len({exporter(c, group_id) for c in members}) == 1
            return epoch
    state = [(c.username, c._mls.epoch(group_id)) for c in members]
    raise AssertionError(f"no convergence at epoch {epoch}: {state}")


async def talk(clients: list[Client], note: str) -> None:
    """Each member sends one message; every other one shows it."""
    for sender in clients:
        await sender.send(TEAM, f"{note} from {sender.username}")
    for receiver in clients:
        expected = [f"{note} from {s.username}" for s in clients if s is not receiver]
        await until_shown(receiver, *expected)


# ---- attackers ------------------------------------------------------------------


async def hostile_commit(attacker: Client, group_id: bytes, hostile: Hostile) -> int:
    """The attacker's self-update, rewritten by ``hostile`` and published over its
    own connection; returns the epoch the server answered (it accepted it).

    The attacker's own state stays where it was (the commit is cleared, not
    merged): its client heals like anyone's.
    """
    session = attacker._session
    assert session is not None
    mls = attacker._mls
    current = mls.export_group_info(group_id)
    key = membership_key(attacker._store.mls_rows(), group_id)
    bundle = mls.self_update(group_id)
    commit, group_info = hostile(attacker, bundle, current, key)
    try:
        published = await session.conn.publish(
            group_id, bundle.epoch, MessageKind.COMMIT, commit, group_info=group_info
        )
    finally:
        mls.clear_pending_commit(group_id)
    return published.epoch


def broken_tag(
    _attacker: Client, bundle: CommitBundle, _current: bytes, _key: bytes
) -> tuple[bytes, bytes]:
    return with_broken_membership_tag(bundle.commit), bundle.group_info


def garbage_path(
    attacker: Client, bundle: CommitBundle, current: bytes, key: bytes
) -> tuple[bytes, bytes]:
    return with_garbage_path(
        bundle.commit,
        bundle.group_info,
        current_group_info=current,
        membership_key=key,
        identity=attacker._identity,
    )


async def forged_group_info_commit(attacker: Client, group_id: bytes) -> None:
    """A valid self-update whose GroupInfo names an external key of the attacker's
    choosing; the attacker merges it (its state is the group's)."""
    session = attacker._session
    assert session is not None
    bundle = attacker._mls.self_update(group_id)
    session.persist(lambda tx: tx.apply_changes(bundle.changes))
    forged = with_external_pub(bundle.group_info, secrets.token_bytes(32), attacker._identity)
    await session.conn.publish(
        group_id, bundle.epoch, MessageKind.COMMIT, bundle.commit, group_info=forged
    )
    applied = attacker._mls.merge_pending_commit(group_id)
    session.persist(lambda tx: tx.apply_changes(applied.changes))


async def lose_queue_then_gap(client: Client, group_id: bytes) -> None:
    """What a member whose queue overflowed gets: what was queued is gone, and a
    gap notice for the group arrives instead."""
    session = client._session
    assert session is not None
    queued = await session.conn.fetch(1000)
    if queued:
        await session.conn.ack(queued[-1].seq)
    seq = max([client._store.processed_seq(), *(e.seq for e in queued)]) + 1
    gap = Envelope(seq, NO_SENDER, b"", int(time.time() * 1000), gap_group_id=group_id)
    async with client._operation(catch_up=False) as locked:
        await _receive.process_envelopes(locked, [gap])


# ---- 1. commits nobody else can process ------------------------------------------


@pytest.mark.parametrize("hostile", [broken_tag, garbage_path], ids=["broken_tag", "garbage_path"])
async def test_a_commit_the_others_cannot_process_heals_and_the_attacker_is_removed(
    make_client: MakeClient, hostile: Hostile
) -> None:
    (alice, bob, carol, mallory), gid = await team(make_client, "alice", "bob", "carol", "mallory")
    honest = [alice, bob, carol]
    start = await server_epoch(alice, gid)
    assert await hostile_commit(mallory, gid, hostile) == start + 1  # the server took it

    epoch = await converge(honest, gid)
    assert epoch == start + 1 + len(honest)  # one rejoin each, no more
    line = f"{mallory.username}'s change to the group could not be processed; rejoining"
    for member in honest:
        assert lines(member).count(line) == 1
        assert lines(member).count("you rejoined; you are up to date") == 1
    await talk(honest, "after the recovery")

    await alice.remove(TEAM, [mallory.username])
    await converge(honest, gid)
    assert mallory.identity_key not in alice._mls.members(gid)
    assert len(alice._mls.members(gid)) == len(honest)
    await talk(honest, "without mallory")


async def test_members_healing_at_once_take_turns_and_converge(make_client: MakeClient) -> None:
    (alice, bob, carol, dave, mallory), gid = await team(
        make_client, "alice", "bob", "carol", "dave", "mallory"
    )
    honest = [alice, bob, carol, dave]
    await hostile_commit(mallory, gid, broken_tag)
    # Everyone finds out at once: their rejoins race for the same epochs;
    # the losers pause a random while and go again.
    await asyncio.gather(*(member.receive() for member in honest))
    await converge(honest, gid)
    line = f"{mallory.username}'s change to the group could not be processed; rejoining"
    for member in honest:
        assert lines(member).count(line) == 1
        assert lines(member).count("you rejoined; you are up to date") == 1
    await talk(honest, "after racing back")


async def test_a_member_who_commits_garbage_every_epoch_costs_a_rejoin_each_time(
    make_client: MakeClient,
) -> None:
    (alice, bob, carol, mallory), gid = await team(make_client, "alice", "bob", "carol", "mallory")
    honest = [alice, bob, carol]
    line = f"{mallory.username}'s change to the group could not be processed; rejoining"
    for round_ in range(1, 4):
        # Mallory catches up like anyone (after the first round: by rejoining).
        await converge([*honest, mallory], gid)
        await hostile_commit(mallory, gid, garbage_path)
        await converge(honest, gid)
        for member in honest:
            assert lines(member).count(line) == round_
            assert lines(member).count("you rejoined; you are up to date") == round_
    await alice.remove(TEAM, [mallory.username])
    await converge(honest, gid)
    assert set(alice._mls.members(gid)) == {c.identity_key for c in honest}
    await talk(honest, "finally")


async def test_a_rejoin_checks_the_served_group_info_before_it_commits(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    (alice, bob), gid = await team(make_client, "alice", "bob")
    await alice.create_group("other")
    await alice.invite("other", [bob.username])
    await until_shown(bob, "you joined")
    other = next(g.group_id for g in alice.groups() if g.name == "other")
    session = bob._session
    assert session is not None
    honest = session.conn.fetch_group_info
    start = await server_epoch(alice, gid)

    async def another_groups(group_id: bytes) -> GroupSnapshot:
        served = await honest(other)
        return GroupSnapshot(group_id, served.epoch, served.group_info, served.ratchet_tree)

    async def another_epochs(group_id: bytes) -> GroupSnapshot:
        served = await honest(group_id)
        return dataclasses.replace(served, epoch=served.epoch + 1)

    conn: Any = session.conn  # a lying server, by fault injection on a private attribute
    with caplog.at_level(logging.WARNING, logger="qpq_client"):
        conn.fetch_group_info = another_groups
        await lose_queue_then_gap(bob, gid)  # bob must rejoin: the first lie
        conn.fetch_group_info = another_epochs
        await bob.receive()
    refusals = [r.getMessage() for r in caplog.records if "not rejoining" in r.getMessage()]
    # Refused each time it is tried (each operation settles after catching up and at its end).
    assert set(refusals) == {f"the server served a GroupInfo that is not {TEAM}'s; not rejoining"}
    assert len(refusals) >= 2
    assert await server_epoch(alice, gid) == start  # nothing was committed
    del conn.fetch_group_info
    assert await converge([alice, bob], gid) == start + 1
    await talk([alice, bob], "rejoined from the real one")


# ---- honest races still converge, without a rejoin --------------------------------


async def test_honest_races_converge_without_a_rejoin(make_client: MakeClient) -> None:
    (alice, bob, carol, dave), gid = await team(make_client, "alice", "bob", "carol", "dave")
    start = await server_epoch(alice, gid)
    home = dave.home
    await dave.close()  # dave is offline across all of what follows
    # Two members committing at once: one wins, the other goes again on top.
    await asyncio.gather(alice.update(TEAM), bob.update(TEAM))
    # A lagging member: what was queued for carol reaches her only after
    # she published (a commit for an epoch the group left).
    with lagging(carol) as outcomes:
        await carol.update(TEAM)
    assert [type(o).__name__ for o in outcomes] == ["EpochConflictError", "NoneType"]
    await alice.send(TEAM, "while dave is away")
    dave = Client.open(home, PASSPHRASE)
    try:
        await dave.connect()
        everyone = [alice, bob, carol, dave]
        assert await converge(everyone, gid) == start + 3
        for member in everyone:
            assert not [line for line in lines(member) if "rejoin" in line], member.username
        assert "while dave is away" in lines(dave)
        await talk(everyone, "all here")
    finally:
        await dave.close()


# ---- 2. a GroupInfo the server cannot check --------------------------------------


async def test_a_forged_group_info_is_replaced_and_never_splits_the_group(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    (alice, bob, carol, mallory), gid = await team(make_client, "alice", "bob", "carol", "mallory")
    everyone = [alice, bob, carol, mallory]
    await forged_group_info_commit(mallory, gid)
    with caplog.at_level(logging.WARNING, logger="qpq_client"):
        for member in (alice, bob):
            await member.receive()
    line = (
        f"{mallory.username}'s change came with a GroupInfo that does not match the group;"
        " the server now gets ours"
    )
    assert line in lines(alice)
    assert line in lines(bob)
    session = alice._session
    assert session is not None
    served = await session.conn.fetch_group_info(gid)
    assert group_info_facts(served.group_info).digest == alice._mls.group_info_facts(gid).digest
    assert "sending ours" in caplog.text

    # Carol falls behind (her queue overflowed) and rejoins from what is
    # served: the members' GroupInfo, so the others process her rejoin.
    await lose_queue_then_gap(carol, gid)
    await converge(everyone, gid)
    assert "you rejoined; you are up to date" in lines(carol)
    assert "you rejoined; you are up to date" not in lines(alice)
    await talk([alice, bob, carol], "one group")

    # Again, but carol rejoins from the forged GroupInfo before anyone could
    # replace it: nobody else can process her rejoin, and they heal too.
    await forged_group_info_commit(mallory, gid)
    await lose_queue_then_gap(carol, gid)
    await carol.receive()
    await converge(everyone, gid)
    await talk([alice, bob, carol], "still one group")
    await alice.remove(TEAM, [mallory.username])
    await converge([alice, bob, carol], gid)
    await talk([alice, bob, carol], "without mallory")


# ---- 3. and 5. Welcomes that would revive a group -------------------------------


def _fake_welcome(attacker: Client, group_id: bytes, key_package: bytes) -> bytes:
    """A Welcome into a group the attacker makes up, under ``group_id``."""
    fake = MlsClient(attacker._identity)
    fake.create_group(group_id)
    welcome = fake.add_members(group_id, [key_package]).welcome
    assert welcome is not None
    return welcome


async def _add_with_welcome(
    attacker: Client, group_id: bytes, key_package: bytes, welcome: bytes
) -> None:
    """A real Add commit of ``attacker`` in ``group_id``, published with ``welcome``."""
    session = attacker._session
    assert session is not None
    bundle = attacker._mls.add_members(group_id, [key_package])
    session.persist(lambda tx: tx.apply_changes(bundle.changes))
    await session.conn.publish(
        group_id,
        bundle.epoch,
        MessageKind.COMMIT,
        bundle.commit,
        welcome=welcome,
        group_info=bundle.group_info,
    )
    applied = attacker._mls.merge_pending_commit(group_id)
    session.persist(lambda tx: tx.apply_changes(applied.changes))


async def test_a_welcome_never_revives_a_group_and_a_new_membership_is_a_new_entry(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    (alice, bob, rob), gid = await team(make_client, "alice", "bob", "rob")
    await alice.remove(TEAM, [bob.username])
    await until_shown(bob, "you were removed")
    await rob.receive()
    before = lines(bob)
    rob_session = rob._session
    assert rob_session is not None

    # A stranger's fake group under the old id, riding a real Add of rob's own group.
    await rob.create_group("decoy")
    decoy = next(g.group_id for g in rob.groups() if g.name == "decoy")
    package = await rob_session.conn.fetch_key_package(bob.identity_key)
    await _add_with_welcome(rob, decoy, package, _fake_welcome(rob, gid, package))
    # A fake state at epoch 1 of the group itself, riding a real Add in it.
    package = await rob_session.conn.fetch_key_package(bob.identity_key)
    await _add_with_welcome(rob, gid, package, _fake_welcome(rob, gid, package))
    with caplog.at_level(logging.WARNING, logger="qpq_client"):
        assert await bob.receive(wait=2) == []
    refusals = [r.getMessage() for r in caplog.records if "invitation" in r.getMessage()]
    assert refusals == [
        f"an invitation from {rob.username} for another group than the one the server"
        " delivered it for; ignored",
        f"an invitation from {rob.username} to a group you were removed from was delivered"
        " again; ignored",
    ]
    assert [(g.name, g.status) for g in bob.groups()] == [(TEAM, GroupStatus.REMOVED)]
    assert lines(bob) == before
    assert gid not in bob._mls.group_ids()

    # A real invitation back: a new entry with its own history; the old one stays.
    await alice.receive()  # rob's Add: bob is in the roster again, without a state
    await alice.remove(TEAM, [bob.username])
    await alice.invite(TEAM, [bob.username])
    await until_shown(bob, "you joined (invited by")
    old, new = sorted(bob.groups(), key=lambda g: g.status is GroupStatus.ACTIVE)
    assert (old.name, old.status, old.group_id) == (TEAM, GroupStatus.REMOVED, gid)
    assert (new.status, new.group_id) == (GroupStatus.ACTIVE, gid)
    assert lines(bob, old.name) == before
    # The old entry keeps the name: the new one says what it is called instead.
    assert lines(bob, new.name) == [
        f"you joined (invited by {alice.username})",
        f"its members call this group {TEAM}; that name is taken here, so it is {new.name}"
        f" (qpq group rename {new.name} NEW)",
    ]
    await alice.send(TEAM, "welcome back")
    await until_shown(bob, "welcome back")
    await bob.send(new.name, "glad to be back")
    await until_shown(alice, "glad to be back")


async def test_a_replayed_welcome_is_refused_and_a_used_last_resort_package_is_replaced(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_keys, "TARGET", 0)  # only last-resort KeyPackages
    alice, bob = await make_client("alice"), await make_client("bob")
    await bob.add_contact(alice.username)
    await alice.create_group(TEAM)
    await alice.invite(TEAM, [bob.username])
    session = bob._session
    assert session is not None
    (welcome,) = [
        e
        for e in await session.conn.fetch(100)
        if peek_message(e.payload).kind is MlsMessageKind.WELCOME
    ]
    await until_shown(bob, "you joined")
    (group,) = alice.groups()
    await alice.remove(TEAM, [bob.username])
    await until_shown(bob, "you were removed")
    before = lines(bob)

    # A lying server delivers the old Welcome again, twice.
    with caplog.at_level(logging.WARNING, logger="qpq_client"):
        for _ in range(2):
            seq = bob._store.processed_seq() + 1
            replay = Envelope(seq, alice.identity_key, welcome.payload, welcome.enqueued_at_ms)
            async with bob._operation(catch_up=False) as locked:
                await _receive.process_envelopes(locked, [replay])
    refusals = [r.getMessage() for r in caplog.records if "invitation" in r.getMessage()]
    assert refusals == [f"an invitation from {alice.username} was delivered again; ignored"] * 2
    assert [(g.name, g.status) for g in bob.groups()] == [(TEAM, GroupStatus.REMOVED)]
    assert lines(bob) == before
    assert group.group_id not in bob._mls.group_ids()

    # The join used (and deleted) bob's last-resort package; he uploaded a new
    # one, so he can be invited again.
    await alice.invite(TEAM, [bob.username])
    await until_shown(bob, "you joined")
    await alice.send(TEAM, "back")
    await until_shown(bob, "back")


# ---- 4. a removed member, directly ----------------------------------------------

LOCAL = PeerConfig(listen_host="127.0.0.1", listen_port=0)


async def _profiles(server: RunningServer, root: Path, *names: str) -> dict[str, Path]:
    homes = {name: root / name for name in names}
    for name, home in homes.items():
        created = await Client.create(
            home,
            PASSPHRASE,
            name,
            server=ServerAddress(server.host, server.port),
            trust=Trust(pin=server.fingerprint),
            token=server.token,
        )
        await created.close()
    return homes


async def _connected(home: Path, server: RunningServer, opened: list[Client]) -> Client:
    client = Client.open(home, PASSPHRASE)
    opened.append(client)
    await client.connect(server=ServerAddress(server.host, server.port), p2p=LOCAL)
    return client


async def _old_state_message(rob: Client, group_id: bytes, text: str) -> None:
    """What a removed rob sends, directly, with the state he still has."""
    session = rob._session
    assert session is not None
    assert session.peers is not None
    encrypted = rob._mls.encrypt(group_id, encode_text(text, int(time.time() * 1000)))
    session.persist(lambda tx: tx.apply_changes(encrypted.changes))
    epoch = rob._mls.epoch(group_id)

    async def via_server() -> None:
        await session.conn.publish(group_id, epoch, MessageKind.APPLICATION, encrypted.message)

    await session.peers.send(encrypted.message, via_server=via_server)


async def _direct_trio(server: RunningServer, tmp_path: Path, opened: list[Client]) -> bytes:
    """alice, bob and rob (direct delivery on) in "team"; bob and rob also in "other";
    rob has found both directly. Returns the team's group id."""
    homes = await _profiles(server, tmp_path, "alice", "bob", "rob")
    alice, bob, rob = [await _connected(homes[n], server, opened) for n in homes]
    for invitee in (bob, rob):
        await invitee.add_contact("alice")
    await rob.add_contact("bob")
    await alice.create_group(TEAM)
    await alice.invite(TEAM, ["bob", "rob"])
    for member in (bob, rob):
        await until_shown(member, "you joined")
    await bob.create_group("other")
    await bob.invite("other", ["rob"])
    await until_shown(rob, "you joined (invited by bob)")
    assert all(peer.reachable for peer in await rob.peers(probe=True))
    return next(g.group_id for g in alice.groups())


async def test_a_removed_member_cannot_talk_directly_past_the_servers_history(
    server: RunningServer, tmp_path: Path
) -> None:
    opened: list[Client] = []
    try:
        gid = await _direct_trio(server, tmp_path, opened)
        alice, bob, rob = opened
        await alice.remove(TEAM, ["rob"])
        # Bob has not processed the removal when rob's message arrives
        # directly: he catches up first, then hands it back, and the server
        # refuses it from someone no longer in the group.
        with pytest.raises(ForbiddenError):
            await _old_state_message(rob, gid, "still here?")
        assert "alice removed rob" in lines(bob)
        assert "still here?" not in lines(bob)
        assert all(not e.unconfirmed for e in bob.history(TEAM))
    finally:
        for client in opened:
            with contextlib.suppress(Exception):
                await client.close()


async def test_a_direct_message_shown_while_the_server_was_away_is_withdrawn_when_it_returns(
    server: RunningServer, tmp_path: Path
) -> None:
    opened: list[Client] = []
    again: RunningServer | None = None
    try:
        gid = await _direct_trio(server, tmp_path, opened)
        alice, bob, rob = opened
        await alice.send(TEAM, "before")
        await until_shown(bob, "before")
        await alice.remove(TEAM, ["rob"])
        assert server.stop() == 0
        # Bob cannot catch up: he shows it, marked unconfirmed.
        with pytest.raises(ConnectionFailedError):
            await _old_state_message(rob, gid, "still here?")
        (shown,) = [e for e in await bob.receive() if e.body == "still here?"]
        assert (shown.unconfirmed, shown.withdrawn) == (True, False)

        run_dir = tmp_path / "again"
        run_dir.mkdir()
        again = start_server(run_dir, data_dir=server.data_dir)
        await bob.close()
        bob = await _connected(bob.home, again, opened)
        entries = await until_shown(bob, "was withdrawn")
        who = "rob"
        assert (
            f"a message from {who} that arrived directly while the server was unreachable"
            f" was withdrawn: {who} is no longer a member"
        ) in entries
        (withdrawn,) = [e for e in bob.history(TEAM) if e.body == "still here?"]
        assert (withdrawn.unconfirmed, withdrawn.withdrawn) == (False, True)
        assert "alice removed rob" in lines(bob)
        # What alice sent before is confirmed: not marked at all.
        assert all(not e.unconfirmed for e in bob.history(TEAM))
    finally:
        for client in opened:
            with contextlib.suppress(Exception):
                await client.close()
        if again is not None:
            again.stop()


def test_the_command_marks_what_arrived_directly_until_the_server_confirmed_it() -> None:
    entry = HistoryEntry("team", "text", "rob", "still here?", 0, False, unconfirmed=True)
    assert entry_line(entry) == "[team] rob (unconfirmed): still here?"
    withdrawn = dataclasses.replace(entry, unconfirmed=False, withdrawn=True)
    assert entry_line(withdrawn) == "[team] rob (withdrawn): still here?"
    assert entry_json(withdrawn)["withdrawn"] is True
    assert entry_line(dataclasses.replace(withdrawn, withdrawn=False)) == "[team] rob: still here?"
