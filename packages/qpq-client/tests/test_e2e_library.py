"""Group life cycles through the library, in-process, against one real server.

These cases need a fault or a delay at an exact point (a commit still on its
way, a crash between persisting and publishing, a removed member's old keys);
in-process clients make that point deterministic without sleeps.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSPHRASE, MakeClient, lagging

from qpq_client import Client, NotAMemberError, Trust, WrongPassphraseError, _sending
from qpq_client._plaintext import MAX_PLAINTEXT_BYTES, encode_text
from qpq_client._rows import OutboxKind, OutboxState
from qpq_client._state import StateStore
from qpq_proto import MessageKind
from qpq_proto.errors import EpochConflictError, ForbiddenError, UnauthenticatedError
from qpq_server.testing import RunningServer

pytestmark = pytest.mark.slow


async def bodies(client: Client, wait: float = 10.0) -> list[str]:
    return [e.body for e in await client.receive(wait=wait)]


async def team(make_client: MakeClient, *names: str) -> list[Client]:
    """Clients named ``names``; the first creates "team" and invites the rest."""
    clients = [await make_client(n) for n in names]
    owner, *others = clients
    for client in others:
        await client.add_contact(owner.username)  # so the invitation is joined, not held
    await owner.create_group("team")
    await owner.invite("team", [c.username for c in others])
    for client in others:
        assert await bodies(client) == [f"you joined (invited by {owner.username})"]
    return clients


def group_id(client: Client) -> bytes:
    (group,) = client.groups()
    return group.group_id


async def test_removed_member_cannot_talk_with_old_epoch_keys(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob, carol = await team(make_client, "alice", "bob", "carol")
    gid = group_id(alice)
    await alice.remove("team", [bob.username])
    assert await bodies(carol) == [f"{alice.username} removed {bob.username}"]

    # Bob has not processed his removal: his client still holds the old
    # epoch, which carol keeps for late messages (MAX_PAST_EPOCHS).
    session = bob._session
    assert session is not None
    old_epoch = session.mls.epoch(gid)
    assert old_epoch == carol._mls.epoch(gid) - 1
    late = session.mls.encrypt(gid, encode_text("still here?", 1))
    # The server checks its verified roster: bob is out, his publish is refused.
    with pytest.raises(ForbiddenError):
        await session.conn.publish(gid, old_epoch, MessageKind.APPLICATION, late.message)
    await alice.send("team", "only members now")

    entries = await carol.receive(wait=10)
    assert [(e.sender, e.body) for e in entries] == [(alice.username, "only members now")]
    assert "still here?" not in [e.body for e in carol.history("team")]
    carol_session = carol._session
    assert carol_session is not None
    assert await carol_session.conn.fetch(10) == ()


async def test_a_megabyte_of_escaped_quotes_does_not_hold_up_the_next_message(
    make_client: MakeClient,
) -> None:
    alice, bob = await team(make_client, "alice", "bob")
    session = alice._session
    assert session is not None
    # A quote, then a mebibyte of escaped quotes that are never closed:
    # reading it once took quadratic time (hours at this size), so every
    # receive that reached it ran past its wait and the next message never
    # showed. (Within what the server takes once encrypted.)
    poison = b'"' + b'\\"' * (min(MAX_PLAINTEXT_BYTES, 1024 * 1024) // 2)
    await _sending.send_application(session, group_id(alice), poison)
    await alice.send("team", "after the poison")
    shown: list[tuple[str, str]] = []
    for _ in range(6):
        shown += [(e.kind, e.body) for e in await bob.receive(wait=10)]
        if ("text", "after the poison") in shown:
            break
    assert shown == [
        ("event", f"{alice.username} sent a message this client cannot show (not a qpq message)"),
        ("text", "after the poison"),
    ]


def epochs(*clients: Client) -> list[int | None]:
    return [c.groups()[0].epoch for c in clients]


async def test_self_updates_racing_for_one_epoch_both_land(make_client: MakeClient) -> None:
    alice, bob, carol = await team(make_client, "alice", "bob", "carol")
    (start,) = set(epochs(alice, bob, carol))
    assert (await alice.update("team")).epoch == start + 1
    # Alice's commit has not reached bob when he updates: his commit for the
    # same epoch loses at the server, he processes hers and commits again.
    with lagging(bob) as published:
        assert (await bob.update("team")).epoch == start + 2
    assert [type(outcome) for outcome in published] == [EpochConflictError, type(None)]
    assert await bodies(alice, wait=0) == []  # a key update is not news
    assert await bodies(carol, wait=0) == []
    assert epochs(alice, bob, carol) == [start + 2] * 3
    await carol.send("team", "still talking")
    for client in (alice, bob):
        assert await bodies(client) == ["still talking"]
    await bob.send("team", "me too")
    for client in (alice, carol):
        assert await bodies(client) == ["me too"]


async def test_leave_overtaken_by_another_commit_is_proposed_again(
    make_client: MakeClient,
) -> None:
    alice, bob, carol = await team(make_client, "alice", "bob", "carol")
    (start,) = set(epochs(alice, bob, carol))
    await alice.update("team")
    # Carol proposes her leave before alice's commit reached her: the
    # proposal is framed for an epoch the others have already left behind.
    with lagging(carol) as published:
        await carol.leave("team")
    # The server verifies proposals too: one for a past epoch is refused.
    assert [type(outcome) for outcome in published] == [EpochConflictError]
    assert carol.groups()[0].status == "leaving"
    assert await bodies(alice, wait=0) == []  # the stale proposal cannot be committed
    assert await bodies(bob, wait=0) == []
    assert epochs(alice, bob, carol) == [start + 1, start + 1, start]
    # Carol processes alice's commit, sees her leave was not in it, proposes again;
    # alice commits that one as she receives it.
    assert await bodies(carol, wait=0) == []
    assert await bodies(alice) == [f"{carol.username} left"]
    assert await bodies(carol) == ["you left"]
    assert await bodies(bob) == [f"{carol.username} left"]
    assert carol.groups()[0].status == "left"
    with pytest.raises(NotAMemberError):
        await carol.send("team", "one more thing")
    await bob.send("team", "just us")
    assert await bodies(alice) == ["just us"]
    assert sorted(await alice.members("team")) == sorted([alice.username, bob.username])
    assert epochs(alice, bob) == [start + 2] * 2


class Crash(BaseException):
    """The process dies at this point (nothing in the client may catch it)."""


@contextlib.contextmanager
def crash_at_commit_publish(client: Client, *, after_server_accepted: bool) -> Iterator[None]:
    """Die when publishing a commit: before the server saw it, or right after it accepted it."""
    conn: Any = client._session.conn  # fault injection on a private attribute
    real_publish = conn.publish

    async def publish(*args: Any, **kwargs: Any) -> Any:
        if args[2] is MessageKind.COMMIT:
            if after_server_accepted:
                await real_publish(*args, **kwargs)
            raise Crash
        return await real_publish(*args, **kwargs)

    conn.publish = publish
    try:
        yield
    finally:
        del conn.publish


async def restart(client: Client) -> Client:
    """What a new process finds: the state file as the crashed one left it."""
    home = client.home
    await client.close()  # only lets go of the file and the lock; writes nothing
    restarted = Client.open(home, PASSPHRASE)
    await restarted.connect()  # finishes the outbox, then catches up
    return restarted


@pytest.mark.parametrize("after_server_accepted", [False, True], ids=["before", "after"])
async def test_commit_interrupted_around_publish_is_finished_after_restart(
    make_client: MakeClient, after_server_accepted: bool
) -> None:
    alice, bob = await team(make_client, "alice", "bob")
    dave = await make_client("dave")
    await dave.add_contact(alice.username)
    (start,) = set(epochs(alice, bob))
    crash = crash_at_commit_publish(alice, after_server_accepted=after_server_accepted)
    with crash, pytest.raises(Crash):
        await alice.invite("team", [dave.username])
    assert [(r.kind, r.state) for r in alice._store.outbox()] == [
        (OutboxKind.COMMIT, OutboxState.PENDING)
    ]

    alice = await restart(alice)
    try:
        assert alice._store.outbox() == []
        assert await bodies(dave) == [f"you joined (invited by {alice.username})"]
        assert await bodies(bob) == [f"{alice.username} added {dave.username}"]
        assert epochs(alice, bob, dave) == [start + 1] * 3
        await dave.send("team", "made it")
        for client in (alice, bob):
            assert await bodies(client) == ["made it"]
    finally:
        await alice.close()


async def test_commit_interrupted_before_publish_loses_cleanly_to_a_newer_one(
    make_client: MakeClient,
) -> None:
    alice, bob = await team(make_client, "alice", "bob")
    dave = await make_client("dave")
    await dave.add_contact(alice.username)
    (start,) = set(epochs(alice, bob))
    with crash_at_commit_publish(alice, after_server_accepted=False), pytest.raises(Crash):
        await alice.invite("team", [dave.username])
    # While alice is down, bob's commit takes the epoch hers was made for.
    await bob.update("team")
    await bob.send("team", "while you were away")

    alice = await restart(alice)
    try:
        assert alice._store.outbox() == []  # hers was cleared, not published late
        assert await bodies(alice) == ["while you were away"]
        assert epochs(alice, bob) == [start + 1] * 2
        assert sorted(await alice.members("team")) == sorted([alice.username, bob.username])
        await alice.send("team", "back")
        assert await bodies(bob) == ["back"]
        # The invite can simply be made again.
        assert await alice.invite("team", [dave.username]) == [dave.username]
        assert await bodies(dave) == [f"you joined (invited by {alice.username})"]
    finally:
        await alice.close()


async def test_no_secret_in_logs_reprs_errors_or_files(
    make_client: MakeClient, shared_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong_token = "a-wrong-token-that-must-not-echo"
    wrong_passphrase = "a-wrong-passphrase-that-must-not-echo"
    with caplog.at_level(logging.DEBUG):
        alice, bob = await team(make_client, "alice", "bob")
        await alice.send("team", "hello")
        assert await bodies(bob) == ["hello"]
        again = Client.open(alice.home, PASSPHRASE)
        try:
            with pytest.raises(UnauthenticatedError) as refused:
                await again.connect(token=wrong_token)
        finally:
            await again.close()
        with pytest.raises(WrongPassphraseError) as wrong:
            Client.open(alice.home, wrong_passphrase)
    store = StateStore.open(alice.home, PASSPHRASE)
    identity = store.identity()
    store.close()
    assert identity is not None
    seed = identity[0]
    secrets = [shared_server.token, PASSPHRASE, seed.hex(), wrong_token, wrong_passphrase]
    session = alice._session
    assert session is not None
    said = [
        caplog.text,
        str(refused.value),
        str(wrong.value),
        *map(repr, (alice, session, session.conn, alice._store, alice.groups())),
        repr(Trust(pin=shared_server.fingerprint)),
    ]
    for text in said:
        for secret in secrets:
            assert secret not in text, (secret, text)
    # The token, like every setting, lives inside the encrypted database only.
    for path in alice.home.rglob("*"):
        data = path.read_bytes()
        for secret in (shared_server.token.encode(), PASSPHRASE.encode(), seed):
            assert secret not in data, path
