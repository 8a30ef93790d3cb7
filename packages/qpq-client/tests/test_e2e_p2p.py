"""Direct delivery through the library and the `qpq` command, against a real server.

Members who can reach each other hand application messages over directly
(qpq-p2p), and the server carries what they cannot; commits always go
through the server. The package's own tests cover the peer protocol (proofs,
impostors, strangers, mDNS, bounded listeners); these check the client's
use of it: talking while the server is down, falling back to it for a member
who is offline, and showing a message that came both ways once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import NO_RATE_LIMIT, PASSPHRASE, MakeUser, create_profile, unique_name

from qpq_client import Client, DirectDelivery
from qpq_client._client import WAITS_IN_OUTBOX
from qpq_p2p import PeerConfig
from qpq_proto.errors import ConnectionFailedError
from qpq_server.testing import RunningServer, start_server

pytestmark = pytest.mark.slow

#: Members listen on loopback only, on any free port.
LOCAL = PeerConfig(listen_host="127.0.0.1", listen_port=0)

Open = Callable[[str], Awaitable[Client]]


@contextlib.asynccontextmanager
async def pair_on(server: RunningServer, tmp_path: Path) -> AsyncIterator[Open]:
    """alice and bob in a group "pair" on ``server``; ``open(name)`` connects one with p2p."""
    names = {name: unique_name(name) for name in ("alice", "bob")}
    homes = {name: tmp_path / name for name in names}
    for name, home in homes.items():
        created = await create_profile(home, PASSPHRASE, names[name], server)
        await created.close()
    alice, bob = Client.open(homes["alice"], PASSPHRASE), Client.open(homes["bob"], PASSPHRASE)
    try:
        await alice.connect()
        await bob.connect()
        await bob.add_contact(alice.username)
        await alice.create_group("pair")
        await alice.invite("pair", [bob.username])
        joined = [e.body for e in await bob.receive(wait=10)]
        assert joined == [f"you joined (invited by {alice.username})"]
    finally:
        await alice.close()
        await bob.close()
    opened: list[Client] = []

    async def open_member(name: str) -> Client:
        client = Client.open(homes[name], PASSPHRASE)
        opened.append(client)
        await client.connect(p2p=LOCAL)
        return client

    try:
        yield open_member
    finally:
        for client in opened:
            with contextlib.suppress(Exception):
                await client.close()


@pytest.fixture
async def members(shared_server: RunningServer, tmp_path: Path) -> AsyncIterator[Open]:
    """The pair on the module's server."""
    async with pair_on(shared_server, tmp_path) as open_member:
        yield open_member


@pytest.fixture
async def members_own_server(server: RunningServer, tmp_path: Path) -> AsyncIterator[Open]:
    """The pair on a server of the test's own, which it may stop."""
    async with pair_on(server, tmp_path) as open_member:
        yield open_member


async def texts(client: Client, wait: float = 10.0) -> list[str]:
    return [e.body for e in await client.receive(wait=wait) if e.kind == "text"]


async def test_members_keep_talking_directly_while_the_server_is_down(
    members_own_server: Open, server: RunningServer
) -> None:
    alice, bob = await members_own_server("alice"), await members_own_server("bob")
    # While the server is up, each finds the other through its rendezvous.
    await alice.send("pair", "hello directly")
    assert await texts(bob) == ["hello directly"]
    assert server.stop() == 0

    await alice.send("pair", "the server is gone")
    assert await texts(bob) == ["the server is gone"]
    await bob.send("pair", "and we still talk")
    assert await texts(alice) == ["and we still talk"]
    (peer,) = await alice.peers(probe=False)
    assert peer.reachable is True


async def test_a_member_offline_gets_the_message_through_the_server(
    members: Open, tmp_path: Path
) -> None:
    alice = await members("alice")
    await alice.send("pair", "bob is not listening")
    # The direct attempt failed (bob has no node), so the server carried it.
    (peer,) = await alice.peers(probe=False)
    assert peer.reachable is not True
    bob = Client.open(tmp_path / "bob", PASSPHRASE)
    try:
        await bob.connect()
        assert await texts(bob) == ["bob is not listening"]
        assert await texts(bob, wait=0) == []
    finally:
        await bob.close()


async def test_a_message_that_came_both_ways_is_shown_once(members: Open) -> None:
    alice, bob = await members("alice"), await members("bob")
    session: Any = alice._session  # fault injection: as if bob's acknowledgement were lost
    node = session.peers
    real_send = node.send

    async def send_both_ways(message: bytes, *, via_server: Callable[[], Awaitable[None]]) -> Any:
        report = await real_send(message, via_server=via_server)
        await via_server()
        return report

    node.send = send_both_ways
    await alice.send("pair", "once only")
    assert await texts(bob) == ["once only"]
    assert await texts(bob, wait=1) == []  # the server's copy was skipped
    assert [e.body for e in bob.history("pair") if e.kind == "text"] == ["once only"]


def test_peers_and_the_p2p_setting_through_the_command(make_user: MakeUser) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    assert bob.run("contacts", "add", alice.name).stdout.startswith(f"added {alice.name} (key ")

    async def pair(client: Client) -> None:
        await client.create_group("pair")
        await client.invite("pair", [bob.name])

    alice.library(pair)
    assert alice.run("p2p").stdout.strip() == "direct delivery off"
    setting = alice.run("p2p", "on", "--listen", "127.0.0.1:0").stdout.strip()
    assert setting == "direct delivery on, listening on 127.0.0.1:0"
    bob.run("p2p", "on", "--listen", "127.0.0.1:0")
    # bob's endpoints reach the server when he connects with direct delivery on.
    bob.run("keys", "status")
    (line,) = alice.run("peers").lines
    assert line.startswith(f"{bob.name}: ")
    assert "(server)" in line
    assert DirectDelivery.parse_listen("[::1]:7100") == ("::1", 7100)


async def test_sends_while_the_server_is_down_go_direct_and_the_rest_waits_in_order(
    server: RunningServer, tmp_path: Path
) -> None:
    # alice and bob have direct delivery on; carol does not (she is offline
    # anyway while the server is down). With the server stopped, alice's
    # sends reach bob directly; the server's copy (carol's way) waits in
    # alice's outbox and is published once the server is back: in order,
    # and exactly once for each of them.
    names = {name: unique_name(name) for name in ("alice", "bob", "carol")}
    homes = {name: tmp_path / name for name in names}
    for name, home in homes.items():
        created = await create_profile(home, PASSPHRASE, names[name], server)
        await created.close()
    opened: list[Client] = []

    async def open_member(name: str, **connect: Any) -> Client:
        client = Client.open(homes[name], PASSPHRASE)
        opened.append(client)
        await client.connect(**connect)
        return client

    try:
        alice = await open_member("alice", p2p=LOCAL)
        bob = await open_member("bob", p2p=LOCAL)
        carol = await open_member("carol")
        for invitee in (bob, carol):
            await invitee.add_contact(alice.username)
        await alice.create_group("trio")
        await alice.invite("trio", [bob.username, carol.username])
        for invitee in (bob, carol):
            assert [e.kind for e in await invitee.receive(wait=10)] == ["event"]
        await carol.close()
        # alice connects again: she and bob find each other through the server,
        # and alice's profile remembers where bob listens.
        await alice.close()
        alice = await open_member("alice", p2p=LOCAL)
        await alice.send("trio", "while up")
        assert await texts(bob) == ["while up"]
        await alice.close()

        assert server.stop() == 0
        # Started while the server is down, alice still reaches bob: at the
        # address her profile remembers.
        alice = await open_member("alice", p2p=LOCAL)
        assert not alice.online
        for n in range(3):
            with pytest.raises(ConnectionFailedError) as kept:
                await alice.send("trio", f"away {n}")
            assert WAITS_IN_OUTBOX in kept.value.__notes__
        assert await texts(bob) == ["away 0", "away 1", "away 2"]
        assert [e.kind for e in alice.outbox()] == ["message"] * 3

        (tmp_path / "again").mkdir()
        again = start_server(
            tmp_path / "again",
            data_dir=server.data_dir,
            listen=f"{server.host}:{server.port}",
            extra_env=NO_RATE_LIMIT,
        )
        try:
            await alice.reach_server()
            assert alice.online
            assert alice.outbox() == []
            await alice.send("trio", "back")
            carol = await open_member("carol")
            assert await texts(carol) == ["while up", "away 0", "away 1", "away 2", "back"]
            assert await texts(carol, wait=0) == []
            # bob got the server's copies too, and skipped each one he had.
            await bob.reach_server()
            assert await texts(bob) == ["back"]
            assert await texts(bob, wait=0) == []
            shown = [e.body for e in bob.history("trio") if e.kind == "text"]
            assert shown == ["while up", "away 0", "away 1", "away 2", "back"]
        finally:
            again.stop()
    finally:
        for client in opened:
            with contextlib.suppress(Exception):
                await client.close()
