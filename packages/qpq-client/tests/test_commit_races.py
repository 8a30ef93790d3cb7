"""The commit and receive logic against the in-memory delivery service.

Real MLS state and real SQLCipher stores; only the network is replaced (see
fake_server.py), so the races run at exact points and in seconds. The
end-to-end tests cover the same flows through a real server process.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fake_server import FakeConnection, FakeServer, make_session

import qpq_proto as p
from qpq_client import _commits, _receive, _sending
from qpq_client._plaintext import encode_text
from qpq_client._rows import GroupStatus
from qpq_client._session import Session
from qpq_client._state import StateStore
from qpq_core import MlsClient
from qpq_proto.errors import ConnectionFailedError


async def catch_up(session: Session) -> None:
    """What every client operation does first."""
    await _commits.flush_outbox(session)
    await _receive.sync(session)
    await _commits.settle(session)


async def team(server: FakeServer, root: Path, *names: str) -> list[Session]:
    """Sessions named ``names``; the first creates "team" and invites the rest."""
    owner_name = names[0]
    sessions = [await make_session(server, root / owner_name, owner_name)]
    sessions += [
        await make_session(server, root / name, name, contacts=(owner_name,)) for name in names[1:]
    ]
    owner, *others = sessions
    await _commits.create_group(owner, "team")
    await _commits.invite(owner, "team", tuple(names[1:]))
    for session in others:
        await catch_up(session)
    return sessions


def group_id(session: Session) -> bytes:
    (gid,) = session.mls.group_ids()
    return gid


def exporter(session: Session, gid: bytes) -> bytes:
    return session.mls.export_secret(gid, "qpq test", b"", 32)


def texts(session: Session) -> list[str]:
    return [row.body for row in session.store.history()]


async def test_a_commit_that_loses_its_epoch_is_retried_on_the_new_one(tmp_path: Path) -> None:
    server = FakeServer()
    alice, bob = await team(server, tmp_path, "alice", "bob")
    dave = await make_session(server, tmp_path / "dave", "dave", contacts=("alice",))
    gid = group_id(alice)
    start = alice.mls.epoch(gid)

    async def bob_commits_first(conn: FakeConnection, call: p.Publish) -> None:
        if conn.identity_key == alice.me and call.kind is p.MessageKind.COMMIT:
            server.before_publish.remove(bob_commits_first)
            await _commits.update(bob, "team")

    server.before_publish.append(bob_commits_first)
    assert await _commits.invite(alice, "team", ("dave",)) == ["dave"]
    for session in (bob, dave):
        await catch_up(session)

    # Bob's update took epoch start; alice's add was made again on top of it.
    assert [s.mls.epoch(gid) for s in (alice, bob, dave)] == [start + 2] * 3
    assert len({exporter(s, gid) for s in (alice, bob, dave)}) == 1
    assert set(alice.mls.members(gid)) == {alice.me, bob.me, dave.me}
    commits = [(who, c.epoch) for who, c in server.published if c.kind is p.MessageKind.COMMIT]
    assert commits[-2:] == [(bob.me, start), (alice.me, start + 1)]
    # Only the accepted commit's Welcome was sent: dave joined once.
    assert texts(dave).count("you joined (invited by alice)") == 1
    assert alice.store.outbox() == []


async def test_a_leave_overtaken_by_a_commit_is_proposed_again_and_completed(
    tmp_path: Path,
) -> None:
    server = FakeServer()
    alice, bob, carol = await team(server, tmp_path, "alice", "bob", "carol")
    gid = group_id(alice)

    await _commits.leave(bob, "team")
    assert bob.store.group_by_id(gid).status is GroupStatus.LEAVING  # type: ignore[union-attr]
    # Carol commits before anyone saw bob's proposal: it is now for a past epoch.
    await _commits.update(carol, "team")
    await catch_up(alice)  # drops the stale proposal, merges carol's commit
    assert bob.me in alice.mls.members(gid)

    await catch_up(bob)  # sees the epoch move on without his leave: proposes again
    await catch_up(alice)  # stores the fresh proposal and commits it
    await catch_up(bob)
    await catch_up(carol)

    assert bob.store.group_by_id(gid).status is GroupStatus.LEFT  # type: ignore[union-attr]
    assert gid not in bob.mls.group_ids()
    assert set(alice.mls.members(gid)) == set(carol.mls.members(gid)) == {alice.me, carol.me}
    assert exporter(alice, gid) == exporter(carol, gid)
    assert "bob left" in texts(carol)
    assert "you left" in texts(bob)


async def test_sending_waits_for_a_received_leave_to_be_committed(tmp_path: Path) -> None:
    server = FakeServer()
    alice, bob, carol = await team(server, tmp_path, "alice", "bob", "carol")
    gid = group_id(alice)
    await _commits.leave(carol, "team")
    await catch_up(alice)  # stores carol's proposal, then settles: commits it
    assert not alice.mls.has_pending_proposals(gid)
    await _sending.send_text(alice, gid, "just us")
    await catch_up(bob)
    assert texts(bob)[-2:] == ["carol left", "just us"]
    assert set(bob.mls.members(gid)) == {alice.me, bob.me}


async def test_a_commit_accepted_before_a_crash_is_merged_on_restart(tmp_path: Path) -> None:
    server = FakeServer()
    alice, bob = await team(server, tmp_path, "alice", "bob")
    dave = await make_session(server, tmp_path / "dave", "dave", contacts=("alice",))
    gid = group_id(alice)
    start = alice.mls.epoch(gid)

    class Crash(Exception):
        pass

    async def crash_after_accept(conn: FakeConnection, call: p.Publish) -> None:
        if call.kind is p.MessageKind.COMMIT:
            server.before_publish.remove(crash_after_accept)
            await conn.publish(
                call.group_id,
                call.epoch,
                call.kind,
                call.payload,
                welcome=call.welcome,
                group_info=call.group_info,
            )
            raise Crash

    server.before_publish.append(crash_after_accept)
    with pytest.raises(Crash):
        await _commits.invite(alice, "team", ("dave",))
    assert alice.mls.epoch(gid) == start  # pending, never merged

    # A new process: the store as the crashed one left it, a fresh MLS state from it.
    alice.store.close()
    store = StateStore.open(tmp_path / "alice", "pw")
    mls = MlsClient(alice.identity, store.mls_rows())
    restarted = Session(store, mls, alice.identity, "alice", alice.conn)
    await catch_up(restarted)  # the server answers the same commit as accepted: merge it
    await catch_up(bob)
    await catch_up(dave)

    assert restarted.store.outbox() == []
    assert [s.mls.epoch(gid) for s in (restarted, bob, dave)] == [start + 1] * 3
    assert len({exporter(s, gid) for s in (restarted, bob, dave)}) == 1
    assert texts(dave).count("you joined (invited by alice)") == 1


async def test_a_member_whose_queue_overflowed_rejoins_and_talks_again(tmp_path: Path) -> None:
    server = FakeServer()
    alice, bob, carol = await team(server, tmp_path, "alice", "bob", "carol")
    gid = group_id(alice)
    server.full.add(carol.me)  # carol is away and her queue fills up
    await _commits.update(alice, "team")
    await _sending.send_text(alice, gid, "missed by carol")
    server.full.discard(carol.me)
    await _commits.update(bob, "team")
    await catch_up(alice)
    await catch_up(carol)  # a gap notice, a commit she cannot process: she rejoins

    group = carol.store.group_by_id(gid)
    assert group is not None
    assert not group.needs_rejoin
    await catch_up(alice)
    await catch_up(bob)
    assert len({s.mls.epoch(gid) for s in (alice, bob, carol)}) == 1
    assert len({exporter(s, gid) for s in (alice, bob, carol)}) == 1
    assert "missed by carol" not in texts(carol)
    assert "carol rejoined" in texts(alice)
    await _sending.send_text(carol, gid, "back again")
    await catch_up(alice)
    await catch_up(bob)
    assert texts(alice)[-1] == texts(bob)[-1] == "back again"


async def test_a_removed_members_message_is_dropped_even_when_a_server_delivers_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeServer()
    alice, bob, carol = await team(server, tmp_path, "alice", "bob", "carol")
    gid = group_id(alice)
    await _commits.remove(alice, "team", ("bob",))
    # Bob has not processed his removal: his client still holds the old
    # epoch, which carol keeps for late messages (MAX_PAST_EPOCHS). A real
    # server refuses his publish (its roster says he is out); a hostile one
    # might deliver it anyway.
    old_epoch = bob.mls.epoch(gid)
    late = bob.mls.encrypt(gid, encode_text("still here?", 1))
    server.deliver(bob.me, carol.me, late.message, gid)
    await _sending.send_text(alice, gid, "only members now")

    with caplog.at_level(logging.WARNING, logger="qpq_client"):
        await catch_up(carol)
    assert texts(carol)[-2:] == ["alice removed bob", "only members now"]
    (notice,) = [r.getMessage() for r in caplog.records if r.name == "qpq_client"]
    assert notice == (
        f"dropped a message in team from bob, who is no longer a member (sent in epoch {old_epoch})"
    )
    assert "still here?" not in caplog.text
    assert server.queues[carol.me] == []  # dropped, yet acknowledged


async def test_a_commit_of_ours_that_never_left_loses_quietly_to_the_one_that_arrives(
    tmp_path: Path,
) -> None:
    server = FakeServer()
    alice, bob = await team(server, tmp_path, "alice", "bob")
    gid = group_id(alice)
    start = alice.mls.epoch(gid)

    async def connection_lost(conn: FakeConnection, call: p.Publish) -> None:
        if conn.identity_key == alice.me and call.kind is p.MessageKind.COMMIT:
            server.before_publish.remove(connection_lost)
            raise ConnectionFailedError("the connection was lost")

    server.before_publish.append(connection_lost)
    with pytest.raises(ConnectionFailedError):
        await _commits.update(alice, "team")
    assert alice.mls.has_pending_commit(gid)
    await _commits.update(bob, "team")  # bob's takes the epoch
    # A batch arrives before alice's outbox is tried again (as a follower's does).
    await _receive.process_envelopes(alice, await alice.conn.fetch(100))
    assert not alice.mls.has_pending_commit(gid)
    assert alice.store.outbox() == []
    assert alice.mls.epoch(gid) == bob.mls.epoch(gid) == start + 1
    assert exporter(alice, gid) == exporter(bob, gid)
    group = alice.store.group_by_id(gid)
    assert group is not None
    assert not group.needs_rejoin
    assert not [line for line in texts(alice) if "rejoin" in line or "could not" in line]
