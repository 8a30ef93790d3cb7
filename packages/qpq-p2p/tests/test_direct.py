"""Two and three members with real MLS state talk directly, with no server running."""

from __future__ import annotations

import asyncio

from p2p_helpers import CONFIG, AddressBook, build_group, never, nodes

from qpq_p2p import AddressSource, PeerNode, SendReport


async def test_messages_go_both_ways_directly() -> None:
    (alice, bob), group_id = build_group(2)
    book = AddressBook()
    async with nodes([alice, bob], book) as (alice_node, bob_node):
        for sender, node, text in (
            (alice, alice_node, b"hi bob"),
            (bob, bob_node, b"hi alice"),
            (alice, alice_node, b"how are you"),
            (bob, bob_node, b"fine, directly"),
        ):
            message = sender.mls.encrypt(group_id, text).message
            report = await node.send(message, via_server=never)
            other = bob if sender is alice else alice
            assert report == SendReport(direct=(other.key,), failed=(), via_server=False)
        assert bob.texts == [(alice.key, b"hi bob"), (alice.key, b"how are you")]
        assert alice.texts == [(bob.key, b"hi alice"), (bob.key, b"fine, directly")]
        assert bob.log == alice.log == ["persisted via direct"] * 2
        # One proven connection per direction, reused for every message.
        assert book.asked == [bob.key, alice.key]
        (bob_seen,) = alice_node.peers()
        assert bob_seen.identity_key == bob.key
        assert bob_seen.groups == (group_id,)
        assert bob_seen.reachable is True
        assert bob_seen.connected is True
        assert [a.source for a in bob_seen.addresses] == [AddressSource.STATIC]


async def test_every_member_of_a_larger_group_gets_it() -> None:
    (alice, bob, carol), group_id = build_group(3)
    async with nodes([alice, bob, carol], AddressBook()) as (alice_node, _bob, _carol):
        message = alice.mls.encrypt(group_id, b"to you both").message
        report = await alice_node.send(message, via_server=never)
        assert set(report.direct) == {bob.key, carol.key}
        assert bob.texts == carol.texts == [(alice.key, b"to you both")]


async def test_the_acknowledgement_waits_until_the_host_persisted() -> None:
    (alice, bob), group_id = build_group(2)
    bob.hold = asyncio.Event()
    async with nodes([alice, bob], AddressBook()) as (alice_node, _bob_node):
        message = alice.mls.encrypt(group_id, b"durable").message
        sending = asyncio.create_task(alice_node.send(message, via_server=never))
        await asyncio.wait_for(bob.entered.wait(), 10)
        # Bob's host has the message but has not persisted it: no acknowledgement yet.
        assert not sending.done()
        assert bob.log == []
        bob.hold.set()
        report = await asyncio.wait_for(sending, 10)
        assert report.direct == (bob.key,)
        assert bob.log == ["persisted via direct"]


async def test_a_group_over_the_direct_limit_goes_through_the_server() -> None:
    (alice, bob, carol), group_id = build_group(3)
    published: list[bytes] = []
    async with nodes([alice, bob, carol], AddressBook(), max_direct_recipients=1) as started:
        message = alice.mls.encrypt(group_id, b"many").message

        async def via_server() -> None:
            published.append(message)

        report = await started[0].send(message, via_server=via_server)
        assert report == SendReport(direct=(), failed=(), via_server=True)
        assert published == [message]
        assert bob.texts == carol.texts == []


async def test_a_node_that_is_not_started_sends_through_the_server() -> None:
    (alice, _bob), group_id = build_group(2)
    node = PeerNode(alice.identity, alice.mls, alice.receive, CONFIG)
    published: list[bytes] = []
    message = alice.mls.encrypt(group_id, b"offline node").message

    async def via_server() -> None:
        published.append(message)

    assert (await node.send(message, via_server=via_server)).via_server
    assert published == [message]
    await node.close()


async def test_alone_in_a_group_nothing_is_sent() -> None:
    (alice,), group_id = build_group(1)
    async with nodes([alice], AddressBook()) as (node,):
        message = alice.mls.encrypt(group_id, b"note to self").message
        assert await node.send(message, via_server=never) == SendReport((), (), False)
