"""Accounts as people meet them: an invite code at `qpq init`, a suspension that
ends a live `follow()`, a deletion the other members' clients finish by
removing the account's leaves, and a rename that keeps the pinned key."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PASSPHRASE, MakeClient, MakeUser, User, unique_name

from qpq_client import Client
from qpq_proto.errors import ConnectionFailedError, ForbiddenError
from qpq_server.testing import RunningServer, start_server

#: How long a suspension may take to reach a live connection.
_WITHIN_SECONDS = 10.0


def operator(server: RunningServer, *args: str, stdin: str = "") -> str:
    """``qpq-server ARGS`` on the server host, with the server's own settings; stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "qpq_server", *args],
        env=server.env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def invite_only(tmp_path: Path) -> Iterator[RunningServer]:
    """A server that registers by invitation and has no access token."""
    (tmp_path / "server").mkdir()
    running = start_server(tmp_path / "server", token="", extra_env={"QPQ_REGISTRATION": "invite"})
    try:
        yield running
    finally:
        running.stop()


def test_init_takes_an_invite_code_and_says_why_it_refuses(
    invite_only: RunningServer, tmp_path: Path
) -> None:
    alice = User("alice", tmp_path / "alice", invite_only)
    bob = User("bob", tmp_path / "bob", invite_only)
    refused = alice.run("init", "--username", "alice", check=False)
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "qpq: error: the server refused the registration: this server registers people by"
        " invitation: ask its operator for an invite code (qpq init --invite CODE)"
    ]
    assert alice.run("whoami", check=False).returncode == 1  # no profile was written
    code = operator(invite_only, "invites", "create", "--note", "alice").strip()
    alice.run("init", "--username", "alice", "--invite", code)
    used = bob.run("init", "--username", "bob", check=False, QPQ_INVITE=code)
    assert used.returncode == 1
    assert used.stderr.splitlines() == [
        "qpq: error: the server refused the registration: this invite code was already used"
    ]
    # No token anywhere: the account is what admits alice.
    alice.run("group", "create", "g")
    assert "g" in alice.run("group", "list").stdout
    assert code not in alice.run("whoami").stdout


async def test_suspension_ends_a_live_follow(
    make_client: MakeClient, shared_server: RunningServer
) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    await alice.add_contact(bob.username)
    await bob.add_contact(alice.username)
    await alice.create_group("g")
    await alice.invite("g", [bob.username])
    await bob.receive()
    following = alice.follow()
    # The follower is subscribed once bob's message reaches it through the stream.
    await bob.send("g", "are you there?")
    async with asyncio.timeout(_WITHIN_SECONDS):
        async for entry in following:
            if entry.body == "are you there?":
                break
    # Off the event loop: the live connection is served while the operator works.
    await asyncio.to_thread(
        operator, shared_server, "accounts", "suspend", alice.username, "--reason", "spam reports"
    )
    with pytest.raises(ConnectionFailedError, match="this account is suspended: spam reports"):
        async with asyncio.timeout(_WITHIN_SECONDS):
            await anext(following)
    await following.aclose()
    await alice.close()
    again = Client.open(alice.home, PASSPHRASE)
    try:
        with pytest.raises(ForbiddenError, match="suspended: spam reports"):
            await again.connect()
    finally:
        await again.close()
    # Members see the account as suspended.
    assert sorted(await bob.members("g")) == sorted([f"{alice.username} (suspended)", bob.username])


def test_a_deleted_account_leaves_its_groups(make_user: MakeUser) -> None:
    alice, bob, carol = (make_user(n) for n in ("alice", "bob", "carol"))
    a, b, c = alice.name, bob.name, carol.name
    for user in (bob, carol):
        user.library(lambda client: client.add_contact(a))

    async def make_group(client: Client) -> None:
        await client.create_group("g")
        await client.invite("g", [b, c])

    alice.library(make_group)
    bob.recv_until("you joined")
    carol.recv_until("you joined")

    wrong = bob.run("account", "delete", check=False, input_text="robert")
    assert wrong.returncode == 1
    assert wrong.stderr.endswith("qpq: error: not deleted: that is not your username\n")
    done = bob.run("account", "delete", input_text=b)
    assert done.stdout.strip() == f"deleted the account {b}"

    # Each member is told; the first one online removes bob's leaves.
    alice.recv_until(f"{b} deleted their account")
    carol.recv_until(f"{a} removed {b}, whose account was deleted")
    assert sorted(alice.run("group", "members", "g").lines) == sorted([a, c])
    alice.run("send", "g", "just us now")
    carol.recv_until("just us now")
    gone = bob.run("recv", check=False)
    assert gone.returncode == 1
    assert gone.stderr.splitlines() == [
        "qpq: error: this account was deleted; it cannot be used again"
    ]


def test_account_rename_prints_the_new_name(make_user: MakeUser) -> None:
    bob = make_user("bob")
    new = unique_name("robert")
    assert bob.run("account", "rename", new).stdout == f"you are now {new} (was {bob.name})\n"
    assert bob.run("whoami").lines[0] == new


async def test_a_rename_keeps_the_pinned_key(make_client: MakeClient) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    await alice.add_contact(bob.username)
    await bob.add_contact(alice.username)
    await alice.create_group("g")
    await alice.invite("g", [bob.username])
    await bob.receive()
    await alice.mark_verified(bob.username)
    old, key = bob.username, bob.identity_key
    new = f"robert-{old.rsplit('-', 1)[1]}"
    await bob.rename(new)
    assert bob.username == new
    # alice's next connection asks what the keys she pinned are called now.
    home = alice.home
    await alice.close()
    again = Client.open(home, PASSPHRASE)
    try:
        await again.connect()
        contact = again.contact(new)
        assert contact.identity_key == key
        assert contact.verified  # the same key, still verified
        assert [c.username for c in again.contacts() if c.identity_key == key] == [new]
        assert any(e.body == f"{old} is now {new}" for e in again.history("g"))
        await bob.send("g", "new name, same me")
        entries = await again.receive(wait=5)
        assert [(e.sender, e.body) for e in entries if e.kind == "text"] == [
            (new, "new name, same me")
        ]
    finally:
        await again.close()
