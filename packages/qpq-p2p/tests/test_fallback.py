"""A member not reached directly gets the message through the server; nothing is lost.

Here the server path is the host's ``via_server`` recording the bytes (the
real server is in test_server.py): what is checked is when the node falls
back, and that the two copies of one message are processed once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from p2p_helpers import CONFIG, AddressBook, build_group, never, nodes

from qpq_p2p import PeerAddress, PeerNode

ViaServer = Callable[[], Coroutine[Any, Any, None]]


def recorder(message: bytes, published: list[bytes]) -> ViaServer:
    async def via_server() -> None:
        published.append(message)

    return via_server


async def test_a_member_with_no_address_gets_it_through_the_server() -> None:
    (alice, bob, carol), group_id = build_group(3)
    book = AddressBook()
    async with nodes([alice, carol], book) as (alice_node, _carol_node):
        message = alice.mls.encrypt(group_id, b"bob is offline").message
        published: list[bytes] = []
        report = await alice_node.send(message, via_server=recorder(message, published))
        assert report.direct == (carol.key,)
        assert [f.recipient for f in report.failed] == [bob.key]
        assert "no address" in report.failed[0].reason
        assert report.via_server
        assert published == [message]
        # The server delivers to everyone: bob processes it, carol skips her second copy.
        bob.process(published[0], "server")
        carol.process(published[0], "server")
        assert bob.texts == carol.texts == [(alice.key, b"bob is offline")]
        assert carol.log == ["persisted via direct", "duplicate via server"]
        (bob_seen, _carol_seen) = sorted(
            alice_node.peers(), key=lambda p: p.identity_key != bob.key
        )
        assert bob_seen.reachable is False
        assert bob_seen.last_error is not None


async def test_a_listener_that_went_away_is_a_fallback_too() -> None:
    (alice, bob), group_id = build_group(2)
    book = AddressBook()
    async with nodes([alice, bob], book, connect_timeout_seconds=0.5) as (alice_node, bob_node):
        await bob_node.close()  # its address stays in the book: nothing answers there
        message = alice.mls.encrypt(group_id, b"are you there").message
        published: list[bytes] = []
        report = await alice_node.send(message, via_server=recorder(message, published))
        assert report.via_server
        assert "no answer" in report.failed[0].reason
        assert published == [message]


async def test_a_host_that_cannot_take_it_now_sends_the_sender_to_the_server() -> None:
    (alice, bob), group_id = build_group(2)
    async with nodes([alice, bob], AddressBook()) as (alice_node, _bob_node):
        # Alice commits (through the server, which orders it) and writes in the new
        # epoch before Bob processed the commit: his MLS cannot read it yet.
        commit = alice.mls.self_update(group_id).commit
        alice.mls.merge_pending_commit(group_id)
        message = alice.mls.encrypt(group_id, b"after my update").message
        published: list[bytes] = []
        report = await alice_node.send(message, via_server=recorder(message, published))
        assert report.via_server
        assert "unavailable" in report.failed[0].reason
        assert bob.log == []  # nothing persisted: the server's copy will be the one
        # The server delivers in its order: the commit, then the message.
        bob.process(commit, "server")
        bob.process(published[0], "server")
        assert bob.texts == [(alice.key, b"after my update")]
        # Deferred is not unreachable: the next message goes direct again.
        assert alice_node.peers()[0].reachable is True
        again = alice.mls.encrypt(group_id, b"now directly").message
        assert (await alice_node.send(again, via_server=recorder(again, published))).direct


async def test_not_acknowledged_in_time_goes_both_ways_and_is_processed_once() -> None:
    (alice, bob), group_id = build_group(2)
    bob.hold = asyncio.Event()
    async with nodes([alice, bob], AddressBook(), ack_timeout_seconds=0.3) as (alice_node, _b):
        message = alice.mls.encrypt(group_id, b"slow host").message
        published: list[bytes] = []
        report = await alice_node.send(message, via_server=recorder(message, published))
        assert report.via_server
        assert report.failed[0].reason == "no acknowledgement within 0.3 s"
        # Bob's host finishes the direct copy after all, then the server's arrives.
        bob.hold.set()
        await asyncio.wait_for(bob.persisted.wait(), 10)
        bob.process(published[0], "server")
        assert bob.texts == [(alice.key, b"slow host")]
        assert bob.log == ["persisted via direct", "duplicate via server"]


async def test_after_a_failure_messages_skip_the_peer_for_the_backoff() -> None:
    (alice, bob), group_id = build_group(2)
    now = [100.0]
    book = AddressBook()
    config = replace(CONFIG, unreachable_backoff_seconds=30.0)
    node = PeerNode(
        alice.identity, alice.mls, alice.receive, config, resolvers=[book], clock=lambda: now[0]
    )
    await node.start()
    try:
        published: list[bytes] = []
        first = alice.mls.encrypt(group_id, b"one").message
        report = await node.send(first, via_server=recorder(first, published))
        assert book.asked == [bob.key]
        assert report.via_server
        second = alice.mls.encrypt(group_id, b"two").message
        report = await node.send(second, via_server=recorder(second, published))
        assert book.asked == [bob.key]  # not tried again within the backoff
        assert report.failed[0].reason == "a direct attempt failed recently"
        now[0] += 31.0
        third = alice.mls.encrypt(group_id, b"three").message
        await node.send(third, via_server=recorder(third, published))
        assert book.asked == [bob.key, bob.key]
        assert published == [first, second, third]
    finally:
        await node.close()


class GoneAway(AddressBook):
    """A resolver that answers until ``gone`` is set, then fails as a dead server does."""

    gone = False

    async def resolve(self, identity_key: bytes) -> tuple[PeerAddress, ...]:
        if self.gone:
            raise ConnectionError("the rendezvous server is unreachable")
        return await super().resolve(identity_key)


async def test_a_member_stays_where_it_was_found_while_discovery_is_away() -> None:
    (alice, bob), group_id = build_group(2)
    book = GoneAway()
    async with nodes([alice, bob], book) as (alice_node, _bob_node):
        (seen,) = await alice_node.probe(bob.key)
        assert seen.connected
        book.gone = True
        link: Any = alice_node
        await link._drop_link(bob.key)  # as if the connection had been lost
        message = alice.mls.encrypt(group_id, b"still here").message
        report = await alice_node.send(message, via_server=never)
        assert report.direct == (bob.key,)
        await asyncio.wait_for(bob.persisted.wait(), 10)
        assert bob.texts == [(alice.key, b"still here")]
