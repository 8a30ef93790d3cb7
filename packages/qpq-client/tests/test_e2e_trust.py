"""End to end, with a real server: what trust looks like to people, through the library.

A CA certificate, not only a pin, proves the server; hostile payloads leave
receiving working; a name the server gives to another key is caught;
safety numbers agree; confusable and recycled usernames are refused;
invitations from strangers wait as requests. How
the `qpq` command shows these (the contacts line, the safety number rows,
the request line) is checked in test_e2e_cli.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import (
    PASSPHRASE,
    MakeClient,
    User,
    create_profile,
    listed,
    receive_until,
    seen,
    self_signed_ca,
    unique_name,
)

import qpq_proto as p
from qpq_client import (
    Client,
    ConnectionFailedError,
    InvitePolicy,
    KeyChangedError,
    NotAMemberError,
    ServerAddress,
    Trust,
    UnknownUserError,
    _sending,
)
from qpq_client._plaintext import encode_text
from qpq_proto.errors import AlreadyExistsError, InvalidArgumentError
from qpq_server.testing import RunningServer, start_server

pytestmark = pytest.mark.slow

REQUEST = re.compile(r"^\[(?P<name>[^\]]+)\] \? (?P<who>\S+) invited you to (?P=name)$")


async def test_a_ca_certificate_trusts_the_dev_server_and_another_ca_is_refused(
    shared_server: RunningServer, tmp_path: Path
) -> None:
    # The dev server's self-signed certificate names localhost and 127.0.0.1.
    server = shared_server
    created = await Client.create(
        tmp_path / "dave",
        PASSPHRASE,
        unique_name("dave"),
        server=ServerAddress(server.host, server.port),
        trust=Trust.from_options(server.cert_path, None),
        token=server.token,
    )
    await created.close()
    dave = Client.open(created.home, PASSPHRASE)
    try:
        # The stored CA, checked against another of the names it issued for.
        await dave.connect(server=ServerAddress("localhost", server.port))
        assert (await dave.key_status()).available == 100
    finally:
        await dave.close()
    other_ca = Trust.from_options(self_signed_ca(tmp_path / "other-ca.pem"), None)
    dave = Client.open(created.home, PASSPHRASE)
    try:
        with pytest.raises(ConnectionFailedError) as refused:
            await dave.connect(trust=other_ca)
    finally:
        await dave.close()
    message = str(refused.value)
    assert message.startswith(
        f"the TLS handshake with the server at 127.0.0.1:{server.port} failed"
    ), message
    assert message.endswith("check the CA certificate or the pin"), message


async def joined(make_client: MakeClient, *names: str) -> list[Client]:
    """Clients named ``names``; the first creates "g" and invites the rest, its contacts."""
    clients = [await make_client(n) for n in names]
    owner, *others = clients
    for client in others:
        await client.add_contact(owner.username)
    await owner.create_group("g")
    await owner.invite("g", [c.username for c in others])
    for client in others:
        await receive_until(client, f"you joined (invited by {owner.username})")
    return clients


async def test_hostile_payloads_leave_receiving_working(make_client: MakeClient) -> None:
    alice, bob = await joined(make_client, "alice", "bob")
    a = alice.username
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

    lines = await receive_until(bob, f"{a}: still here")
    assert lines[-5:] == [
        f"[g] {a}: far future",
        f"[g] * {a} sent a message this client cannot show (nested too deep)",
        f"[g] * {a} sent a message this client cannot show (unknown message type 'poll')",
        f"[g] * a message from {a} could not be read",
        f"[g] {a}: still here",
    ]
    await bob.send("g", "all fine here")
    assert [e.body for e in await alice.receive(wait=10)] == ["all fine here"]
    assert await bob.receive() == []  # nothing left over, nothing shown twice


async def rename(server: RunningServer, client: Client, new_name: str) -> None:
    """Register another name for ``client``'s identity (gives its old one up)."""
    async with server.connect() as conn:
        await conn.authenticate(client._identity)  # the owner's key, as its own client would
        await conn.call(p.RegisterUser(new_name))


@pytest.fixture
async def no_cooldown_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """Without a cooldown a released name goes to the next taker at once: the
    same thing a malicious server could do to anyone."""
    (tmp_path / "srv").mkdir()
    server = start_server(tmp_path / "srv", extra_env={"QPQ_USERNAME_COOLDOWN_DAYS": "0"})
    try:
        yield server
    finally:
        server.stop()


async def test_a_name_given_to_another_key_is_caught_and_blocks_until_accepted(
    no_cooldown_server: RunningServer, tmp_path: Path
) -> None:
    server = no_cooldown_server
    alice = await create_profile(tmp_path / "alice", PASSPHRASE, "alice", server)
    bob = await create_profile(tmp_path / "bob", PASSPHRASE, "bob", server)
    mallory: Client | None = None
    try:
        await alice.add_contact("bob")  # pins bob's key
        await rename(server, bob, "bob-elsewhere")
        mallory = await create_profile(tmp_path / "mallory", PASSPHRASE, "bob", server)

        await alice.create_group("g")
        for refused_step in (
            lambda: alice.invite("g", ["bob"]),
            lambda: alice.safety_number("bob"),  # qpq verify
            lambda: alice.add_contact("bob"),
        ):
            with pytest.raises(KeyChangedError) as refused:
                await refused_step()
            message = str(refused.value)
            assert "the server now gives another identity key for bob" in message, message
            assert "qpq contacts accept bob" in message, message
        (contact,) = alice.contacts()
        assert (contact.username, contact.identity_key) == ("bob", bob.identity_key)
        assert contact.key_changed is True
        assert contact.new_key == mallory.identity_key
        assert await alice.members("g") == ["alice"]

        # What a person at the terminal reads, and how they accept the new key.
        person = User("alice", alice.home, server, passphrase=PASSPHRASE)
        (line,) = person.run("contacts").lines
        assert line.startswith("bob  key ")
        assert "KEY CHANGED to " in line
        assert "not verified" in person.run("contacts", "accept", "bob").stdout

        accepted = alice.contact("bob")
        assert (accepted.identity_key, accepted.key_changed) == (mallory.identity_key, False)
        assert accepted.verified is False
        assert await alice.invite("g", ["bob"]) == ["bob"]
    finally:
        for client in (alice, bob, mallory):
            if client is not None:
                await client.close()


async def test_safety_numbers_agree_on_both_sides_and_differ_for_other_pairs(
    make_client: MakeClient,
) -> None:
    alice, bob, carol = [await make_client(n) for n in ("alice", "bob", "carol")]
    a, b, c = alice.username, bob.username, carol.username
    ab, ba = await alice.safety_number(b), await bob.safety_number(a)
    assert ab == ba
    assert re.fullmatch(r"\d{60}", ab)
    assert alice.contact(b).verified is False
    assert await alice.safety_number(c) != ab
    assert await bob.safety_number(c) != ab
    assert (await alice.mark_verified(b)).verified is True
    assert [(x.username, x.verified) for x in alice.contacts() if x.username == b] == [(b, True)]


async def test_confusable_and_recycled_usernames_are_refused(
    make_client: MakeClient, shared_server: RunningServer, tmp_path: Path
) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    a, b = alice.username, bob.username
    # Case; a capital I for the l; all Cyrillic letters that look like Latin ones.
    cyrillic = "\u0430\u04cf\u0456\u0441\u0435" + a[len("alice") :]
    for confusable in (a.upper(), a.replace("l", "I", 1), cyrillic):
        with pytest.raises(AlreadyExistsError) as refused:
            await create_profile(
                tmp_path / f"other-{confusable.encode().hex()}",
                PASSPHRASE,
                confusable,
                shared_server,
            )
        assert str(refused.value) == "username is taken (field: username)", confusable
    # A Cyrillic a, a Greek omicron: scripts that pass for Latin, mixed into it.
    for mixed in ("\u0430" + a[1:], "b\u03bf" + b[2:]):
        with pytest.raises(InvalidArgumentError) as mixing:
            await create_profile(
                tmp_path / f"other-{mixed.encode().hex()}", PASSPHRASE, mixed, shared_server
            )
        assert str(mixing.value) == (
            "username mixes scripts that can pass for one another"
            " (use one script, or Latin with one that is not Cyrillic, Greek or Cherokee)"
            " (field: username)"
        ), mixed
    await rename(shared_server, bob, f"robert-{b}")
    with pytest.raises(AlreadyExistsError) as refused:
        await create_profile(tmp_path / "carol", PASSPHRASE, b, shared_server)
    assert str(refused.value) == (
        "username was given up recently and is still reserved for its owner (field: username)"
    )
    await rename(shared_server, bob, b)  # its owner takes it back
    assert (await alice.add_contact(b)).identity_key == bob.identity_key


async def request_name(client: Client, inviter: str) -> str:
    for line in await receive_until(client, f"{inviter} invited you to"):
        match = REQUEST.match(line)
        if match and match["who"] == inviter:
            return match["name"]
    raise AssertionError(f"{client.username} saw no request from {inviter}")


async def test_message_requests_accept_decline_and_block(make_client: MakeClient) -> None:
    alice, bob, carol, mallory = [
        await make_client(n) for n in ("alice", "bob", "carol", "mallory")
    ]
    a, b, c, m = (x.username for x in (alice, bob, carol, mallory))
    await alice.create_group("friends")
    await alice.invite("friends", [b, c])
    await alice.send("friends", "one")
    await alice.send("friends", "two")

    # Bob accepts: the held messages follow, in order.
    held = await request_name(bob, a)
    assert listed(bob) == [f"{held} (requested): "]
    assert [g.inviter for g in bob.groups()] == [a]
    with pytest.raises(NotAMemberError) as refused:
        await bob.send(held, "hello?")
    assert str(refused.value) == (
        f"you have not accepted the invitation to '{held}': qpq group accept {held}"
    )
    assert (await bob.accept(held)).name == "friends"
    assert seen(await bob.receive()) == [
        f"[friends] * you joined (invited by {a})",
        f"[friends] {a}: one",
        f"[friends] {a}: two",
    ]
    await bob.send("friends", "thanks")
    await receive_until(alice, f"{b}: thanks")

    # Carol declines: she leaves the roster, keeps nothing, hears nothing more;
    # the others read that she declined, not that she left.
    declined = await request_name(carol, a)
    await carol.decline(declined)
    told = await receive_until(alice, f"{c} declined the invitation")
    told += await receive_until(bob, f"{c} declined the invitation")
    assert await carol.receive() == []
    assert listed(carol) == []
    await alice.send("friends", "three")
    await receive_until(bob, f"{a}: three")
    # Answered after its fan-out committed: had "three" been queued for
    # carol, this fetch would find it.
    assert await carol.receive() == []
    assert sorted(await alice.members("friends")) == sorted([a, b])
    told += seen(await alice.receive()) + seen(await bob.receive())
    assert not any(line.endswith(f"{c} left") for line in told), told

    # Bob blocks mallory: her invitation goes, and nothing of hers shows.
    await mallory.create_group("spam")
    await mallory.invite("spam", [b])
    await request_name(bob, m)
    await bob.block(m)
    assert listed(bob) == [f"friends: {a}, {b}"]
    await mallory.send("spam", "buy now")
    await mallory.create_group("spam2")
    await mallory.invite("spam2", [b])
    assert await bob.receive() == []
    assert listed(bob) == [f"friends: {a}, {b}"]
    await bob.unblock(m)
    with pytest.raises(UnknownUserError):
        await bob.unblock(m)  # no longer blocked

    # Under the "anyone" policy a stranger's invitation is joined at once.
    await carol.set_invite_policy("anyone")
    assert carol.invite_policy is InvitePolicy.ANYONE
    await mallory.create_group("open")
    await mallory.invite("open", [c])
    await receive_until(carol, f"you joined (invited by {m})")


async def test_a_removed_contact_invites_by_request_again(make_client: MakeClient) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    a = alice.username
    await bob.add_contact(a)
    removed = await bob.remove_contact(a)
    assert (removed.username, removed.contact) == (a, True)  # as it was
    assert bob.contacts() == []
    with pytest.raises(UnknownUserError, match=f"no contact named '{a}'"):
        await bob.remove_contact(a)
    # No longer a contact: alice's invitation waits for bob's decision.
    await alice.create_group("after")
    await alice.invite("after", [bob.username])
    held = await request_name(bob, a)
    assert [(g.name, g.status, g.inviter) for g in bob.groups()] == [(held, "requested", a)]
