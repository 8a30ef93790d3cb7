"""End to end, with a real server and the real `qpq` command: what trust looks like to people.

Hostile payloads leave `qpq recv` working; a name the server gives to
another key is caught; safety numbers agree; confusable and recycled
usernames are refused; invitations from strangers wait as requests.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import PASSPHRASE, User

import qpq_proto as p
from qpq_client import Client, ServerAddress, Trust, _sending
from qpq_client._plaintext import encode_text
from qpq_client._state import StateStore
from qpq_core import Identity
from qpq_server.testing import RunningServer, start_server

pytestmark = pytest.mark.slow

REQUEST = re.compile(
    r"^\[(?P<name>[^\]]+)\] \* (?P<who>\S+) invited you to (?P=name):"
    r" qpq group accept (?P=name) / qpq group decline (?P=name)$"
)


@pytest.fixture
async def alice_library(server: RunningServer, tmp_path: Path) -> AsyncIterator[Client]:
    """Alice as an in-process client, so that she can send what no `qpq` would."""
    client = await Client.create(
        tmp_path / "alice-lib",
        PASSPHRASE,
        "alice",
        server=ServerAddress(server.host, server.port),
        trust=Trust(pin=server.fingerprint),
        token=server.token,
    )
    try:
        yield client
    finally:
        await client.close()


async def test_hostile_payloads_leave_qpq_recv_working(make_user, alice_library: Client) -> None:  # type: ignore[no-untyped-def]
    bob = make_user("bob")
    bob.add_contacts("alice")
    alice = alice_library
    await alice.create_group("g")
    await alice.invite("g", ["bob"])
    bob.recv_until("you joined (invited by alice)")
    session = alice._session  # to send what the `qpq` command never would
    assert session is not None
    (gid,) = session.mls.group_ids()
    for plaintext in (
        b'{"v":1,"type":"text","body":"far future","sent_at":123456789012345678901234567890}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"v":1,"type":"poll","question":"lunch?"}',
    ):
        await _sending.send_application(session, gid, plaintext)
    # A garbage envelope: a real message whose ciphertext was changed on the way.
    encrypted = session.mls.encrypt(gid, encode_text("tampered", 1))
    session.persist(lambda tx: tx.apply_changes(encrypted.changes))
    garbled = encrypted.message[:-1] + bytes([encrypted.message[-1] ^ 0xFF])
    await session.conn.publish(gid, session.mls.epoch(gid), p.MessageKind.APPLICATION, garbled)
    await alice.send("g", "still here")

    lines = bob.recv_until("alice: still here")
    assert lines[-5:] == [
        "[g] alice: far future",
        "[g] * alice sent a message this client cannot show (nested too deep)",
        "[g] * alice sent a message this client cannot show (unknown message type 'poll')",
        "[g] * a message from alice could not be read",
        "[g] alice: still here",
    ]
    bob.run("send", "g", "all fine here")
    assert [e.body for e in await alice.receive(wait=10)] == ["all fine here"]
    assert bob.run("recv").stdout == ""  # nothing left over, nothing shown twice


def identity_of(user: User) -> Identity:
    store = StateStore.open(user.home, user.passphrase)
    try:
        stored = store.identity()
    finally:
        store.close()
    assert stored is not None
    return Identity.from_secret_bytes(stored[0])


async def rename(server: RunningServer, user: User, new_name: str) -> None:
    """Register another name for ``user``'s identity (gives its old one up)."""
    async with server.connect() as client:
        await client.authenticate(identity_of(user))
        await client.call(p.RegisterUser(new_name))


def error_line(result: object) -> str:
    stderr = result.stderr  # type: ignore[attr-defined]
    (line,) = stderr.strip().splitlines()
    assert line.startswith("qpq: error: ")
    return str(line)


async def test_a_name_given_to_another_key_is_caught_and_blocks_until_accepted(
    tmp_path: Path,
) -> None:
    # Without a cooldown a released name goes to the next taker at once: the
    # same thing a malicious server could do to anyone.
    (tmp_path / "srv").mkdir()
    server = start_server(tmp_path / "srv", extra_env={"QPQ_USERNAME_COOLDOWN_DAYS": "0"})
    try:
        alice, bob = (User(n, tmp_path / n, server) for n in ("alice", "bob"))
        for user in (alice, bob):
            user.init()
        alice.add_contacts("bob")  # pins bob's key
        await rename(server, bob, "bob-elsewhere")
        mallory = User("mallory", tmp_path / "mallory", server)
        mallory.run("init", "--username", "bob", QPQ_TOKEN=server.token)

        alice.run("group", "create", "g")
        for args in (
            ("group", "invite", "g", "bob"),
            ("verify", "bob"),
            ("contacts", "add", "bob"),
        ):
            refused = alice.run(*args, check=False)
            assert refused.returncode == 1, args
            line = error_line(refused)
            assert "the server now gives another identity key for bob" in line, line
            assert "qpq contacts accept bob" in line, line
        (listed,) = alice.run("contacts").lines
        assert listed.startswith("bob  key ")
        assert "KEY CHANGED to " in listed
        (data,) = json.loads(alice.run("--json", "contacts").stdout)
        assert data["key_changed"] is True
        assert data["new_key"] == identity_of(mallory).public_key.hex()
        assert alice.run("group", "members", "g").lines == ["alice"]

        accepted = alice.run("contacts", "accept", "bob").stdout
        assert "not verified" in accepted
        assert "invited bob" in alice.run("group", "invite", "g", "bob").stdout
    finally:
        server.stop()


def safety_number(user: User, other: str, *extra: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(user.run("--json", "verify", other, *extra).stdout)
    return data


def test_safety_numbers_agree_on_both_sides_and_differ_for_other_pairs(make_user) -> None:  # type: ignore[no-untyped-def]
    alice, bob = make_user("alice"), make_user("bob")
    make_user("carol")
    ab, ba = safety_number(alice, "bob"), safety_number(bob, "alice")
    assert ab["safety_number"] == ba["safety_number"]
    assert re.fullmatch(r"\d{60}", str(ab["safety_number"]))
    assert ab["verified"] is False
    assert safety_number(alice, "carol")["safety_number"] != ab["safety_number"]
    assert safety_number(bob, "carol")["safety_number"] != ab["safety_number"]
    shown = alice.run("verify", "bob").lines
    assert shown[0] == "safety number with bob (compare it with theirs, in person or on a call):"
    assert "".join(shown[1:4]).replace(" ", "") == ab["safety_number"]
    assert shown[4] == "if they match: qpq verify bob --mark"
    assert safety_number(alice, "bob", "--mark")["verified"] is True
    assert " verified" in alice.run("contacts").stdout


async def test_confusable_and_recycled_usernames_are_refused(  # type: ignore[no-untyped-def]
    make_user, server: RunningServer, tmp_path: Path
) -> None:
    make_user("alice")
    bob = make_user("bob")
    # Case; a capital I for the l; all Cyrillic letters that look like Latin ones.
    for confusable in ("ALICE", "aIice", "\u0430\u04cf\u0456\u0441\u0435"):
        other = User("other", tmp_path / f"other-{confusable.encode().hex()}", server)
        refused = other.run("init", "--username", confusable, check=False, QPQ_TOKEN=server.token)
        assert refused.returncode == 1, confusable
        assert error_line(refused) == (
            "qpq: error: already taken on the server: username is taken (field: username)"
        )
    # A Cyrillic a, a Greek omicron: scripts that pass for Latin, mixed into it.
    for mixed in ("\u0430lice", "b\u03bfb"):
        other = User("other", tmp_path / f"other-{mixed.encode().hex()}", server)
        refused = other.run("init", "--username", mixed, check=False, QPQ_TOKEN=server.token)
        assert refused.returncode == 1, mixed
        assert error_line(refused) == (
            "qpq: error: the server said: username mixes scripts that can pass for one another"
            " (use one script, or Latin with one that is not Cyrillic, Greek or Cherokee)"
            " (field: username)"
        )
    await rename(server, bob, "robert")
    carol = User("carol", tmp_path / "carol", server)
    refused = carol.run("init", "--username", "bob", check=False, QPQ_TOKEN=server.token)
    assert refused.returncode == 1
    assert error_line(refused) == (
        "qpq: error: already taken on the server: username was given up recently and is"
        " still reserved for its owner (field: username)"
    )
    await rename(server, bob, "bob")  # its owner takes it back
    assert bob.run("whoami").lines[0] == "bob"


def request_name(user: User, inviter: str) -> str:
    for line in user.recv_until(f"{inviter} invited you to"):
        match = REQUEST.match(line)
        if match and match["who"] == inviter:
            return match["name"]
    raise AssertionError(f"{user.name} saw no request from {inviter}")


def test_message_requests_accept_decline_and_block(make_user) -> None:  # type: ignore[no-untyped-def]
    alice, bob, carol, mallory = (make_user(n) for n in ("alice", "bob", "carol", "mallory"))
    alice.run("group", "create", "friends")
    alice.run("group", "invite", "friends", "bob", "carol")
    alice.run("send", "friends", "one")
    alice.run("send", "friends", "two")

    # Bob accepts: the held messages follow, in order.
    held = request_name(bob, "alice")
    assert bob.run("group", "list").lines == [f"{held} (requested): "]
    failed = bob.run("send", held, "hello?", check=False)
    assert error_line(failed) == (
        f"qpq: error: you have not accepted the invitation to '{held}': qpq group accept {held}"
    )
    assert (
        bob.run("group", "accept", held).stdout == "joined friends (qpq recv shows what was held)\n"
    )
    assert bob.run("recv").lines == [
        "[friends] * you joined (invited by alice)",
        "[friends] alice: one",
        "[friends] alice: two",
    ]
    bob.run("send", "friends", "thanks")
    alice.recv_until("bob: thanks")

    # Carol declines: she leaves the roster, keeps nothing, hears nothing more.
    declined = request_name(carol, "alice")
    assert carol.run("group", "decline", declined).stdout == f"declined {declined}\n"
    alice.recv_until("carol left")
    assert carol.run("recv").stdout == ""
    assert carol.run("group", "list").stdout == ""
    alice.run("send", "friends", "three")
    bob.recv_until("alice: three")
    assert carol.run("recv", "--wait", "1").stdout == ""
    assert sorted(alice.run("group", "members", "friends").lines) == ["alice", "bob"]

    # Bob blocks mallory: her invitation goes, and nothing of hers shows.
    mallory.run("group", "create", "spam")
    mallory.run("group", "invite", "spam", "bob")
    request_name(bob, "mallory")
    assert bob.run("block", "mallory").stdout == "blocked mallory\n"
    assert bob.run("group", "list").lines == ["friends: alice, bob"]
    mallory.run("send", "spam", "buy now")
    mallory.run("group", "create", "spam2")
    mallory.run("group", "invite", "spam2", "bob")
    assert bob.run("recv", "--wait", "1").stdout == ""
    assert bob.run("group", "list").lines == ["friends: alice, bob"]
    assert bob.run("unblock", "mallory").stdout == "unblocked mallory\n"

    # Under the "anyone" policy a stranger's invitation is joined at once.
    assert carol.run("invites", "anyone").stdout == "invitations joined at once: from anyone\n"
    mallory.run("group", "create", "open")
    mallory.run("group", "invite", "open", "carol")
    carol.recv_until("you joined (invited by mallory)")
