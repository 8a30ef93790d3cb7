"""With a real qpq-server process: rendezvous, fallback when a peer is offline, one copy shown."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from p2p_helpers import CONFIG, LOCAL, attached, group_on_server, never

from qpq_p2p import AddressSource, PeerNode, SendReport
from qpq_server.testing import RunningServer


async def test_peers_find_each_other_through_the_servers_rendezvous(
    server: RunningServer,
) -> None:
    async with group_on_server(server, 2) as ((alice, bob), group_id, (alice_srv, bob_srv)):
        async with attached([bob, alice], [bob_srv, alice_srv]) as (bob_node, alice_node):
            message = alice.mls.encrypt(group_id, b"found you through the server").message
            report = await alice_node.send(message, via_server=never)
            assert report == SendReport(direct=(bob.key,), failed=(), via_server=False)
            assert bob.texts == [(alice.key, b"found you through the server")]
            (seen,) = alice_node.peers()
            assert seen.reachable is True
            assert {(a.host, a.port, a.source) for a in seen.addresses} == {
                (LOCAL, bob_node.port, AddressSource.SERVER)
            }
        # Nothing went through the server: Bob's queue is empty.
        assert await bob_srv.receive(bob) == 0


async def test_the_address_the_server_observed_reaches_a_peer_behind_nat(
    server: RunningServer,
) -> None:
    # Bob publishes an address nothing listens on (his private side, say);
    # the server saw him connect from 127.0.0.1, where his listener is.
    async with group_on_server(server, 2) as ((alice, bob), group_id, (alice_srv, bob_srv)):
        hidden = replace(CONFIG, advertise_hosts=("127.0.0.3",))
        # Long enough for the real handshake on a busy machine; the dead address costs as much.
        quick = replace(CONFIG, connect_timeout_seconds=1.5)
        async with attached([bob, alice], [bob_srv, alice_srv], [hidden, quick]) as (
            bob_node,
            alice_node,
        ):
            message = alice.mls.encrypt(group_id, b"through the observed address").message
            assert (await alice_node.send(message, via_server=never)).direct == (bob.key,)
            (seen,) = alice_node.peers()
            assert [(a.host, a.port) for a in seen.addresses] == [
                ("127.0.0.3", bob_node.port),
                (LOCAL, bob_node.port),
            ]


async def test_a_peer_that_went_offline_gets_it_through_the_server(server: RunningServer) -> None:
    async with group_on_server(server, 2) as ((alice, bob), group_id, (alice_srv, bob_srv)):
        quick = replace(CONFIG, connect_timeout_seconds=0.5)
        async with PeerNode(bob.identity, bob.mls, bob.receive, CONFIG) as bob_node:
            await bob_node.attach_server(bob_srv)  # published, then Bob goes offline
        async with PeerNode(alice.identity, alice.mls, alice.receive, quick) as alice_node:
            await alice_node.attach_server(alice_srv)
            sent = []
            for text in (b"one", b"two", b"three"):
                message = alice.mls.encrypt(group_id, text).message
                epoch = alice.mls.epoch(group_id)
                report = await alice_node.send(
                    message, via_server=alice_srv.via_server(group_id, epoch, message)
                )
                assert report.via_server
                assert report.direct == ()
                sent.append(text)
            (seen,) = alice_node.peers()
            assert seen.reachable is False
        # Bob comes back and reads his queue: nothing was lost, in order.
        assert await bob_srv.receive(bob) == 3
        assert bob.texts == [(alice.key, text) for text in sent]


async def test_a_message_that_travelled_both_ways_is_processed_once(
    server: RunningServer,
) -> None:
    async with group_on_server(server, 3) as (members, group_id, connections):
        (alice, bob, carol), (alice_srv, bob_srv, carol_srv) = members, connections
        bob.hold = asyncio.Event()  # Bob's host is slow: no acknowledgement in time
        # Bob never answers in time; Carol, whose host is not held, always does.
        slow_ack = replace(CONFIG, ack_timeout_seconds=1.0)
        configs = [CONFIG, CONFIG, slow_ack]
        async with attached([bob, carol, alice], [bob_srv, carol_srv, alice_srv], configs) as (
            _bob_node,
            _carol_node,
            alice_node,
        ):
            message = alice.mls.encrypt(group_id, b"once").message
            via_server = alice_srv.via_server(group_id, alice.mls.epoch(group_id), message)
            report = await alice_node.send(message, via_server=via_server)
            assert report.direct == (carol.key,)
            assert [f.recipient for f in report.failed] == [bob.key]
            assert report.via_server
            # Bob's host finishes the direct copy; then the server's copy arrives.
            bob.hold.set()
            await asyncio.wait_for(bob.persisted.wait(), 10)
            assert await bob_srv.receive(bob) == 1
            # Carol got it directly first, then from the server.
            assert await carol_srv.receive(carol) == 1
        for member in (bob, carol):
            assert member.texts == [(alice.key, b"once")]
            assert member.log == ["persisted via direct", "duplicate via server"]
        # The other order: the server's copy first, then the direct one.
        bob.hold = None
        message = alice.mls.encrypt(group_id, b"server first").message
        await alice_srv.via_server(group_id, alice.mls.epoch(group_id), message)()
        assert await bob_srv.receive(bob) == 1
        async with attached([bob, carol, alice], [bob_srv, carol_srv, alice_srv]) as started:
            report = await started[2].send(message, via_server=never)
            assert set(report.direct) == {bob.key, carol.key}  # Bob acknowledges his copy
        assert await carol_srv.receive(carol) == 1
        for member in (bob, carol):
            assert member.texts == [(alice.key, b"once"), (alice.key, b"server first")]
        assert bob.log[-2:] == ["persisted via server", "duplicate via direct"]
        assert carol.log[-2:] == ["persisted via direct", "duplicate via server"]
