"""Direct delivery tried as an attacker would: it cannot be turned against its users.

A member who publishes endpoints that never answer must not stall the
others' sends; an address must be an IP literal (a name is never
resolved), a few per peer; and a few source addresses that fill a
listener's connection slots must not switch direct delivery off for it.
Each against real listeners on 127.0.0.1 (and a real server where the
endpoints come from it).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from p2p_helpers import (
    CONFIG,
    LOCAL,
    AddressBook,
    build_group,
    group_on_server,
    never,
    nodes,
)

from qpq_p2p import AddressSource, PeerAddress, PeerNode, SendReport
from qpq_proto import PEER_ALPN, Endpoint
from qpq_server.testing import RunningServer


class _BlackHole(asyncio.DatagramProtocol):
    """A UDP port that takes every datagram and answers none."""

    def __init__(self) -> None:
        self.received = 0
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.received += 1
        self.arrived.set()


@asynccontextmanager
async def black_hole() -> AsyncIterator[tuple[_BlackHole, int]]:
    transport, hole = await asyncio.get_running_loop().create_datagram_endpoint(
        _BlackHole, local_addr=(LOCAL, 0)
    )
    try:
        yield hole, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def test_a_black_hole_member_does_not_stall_a_send(server: RunningServer) -> None:
    # Bob publishes an endpoint that swallows everything. Alice's direct
    # attempt would wait for its connect and direct timeouts (an hour
    # here); the server path must begin once the acknowledgement is late
    # (ack_timeout), and the server has the message while the attempt to
    # the black hole is still under way.
    patient = replace(
        CONFIG,
        ack_timeout_seconds=1.0,
        connect_timeout_seconds=3600.0,
        direct_timeout_seconds=3600.0,
        unreachable_backoff_seconds=3600.0,
    )
    async with (
        group_on_server(server, 2) as ((alice, bob), group_id, (alice_srv, bob_srv)),
        black_hole() as (hole, port),
    ):
        await bob_srv.publish_endpoints((Endpoint(LOCAL, port),))
        async with PeerNode(alice.identity, alice.mls, alice.receive, patient) as alice_node:
            await alice_node.attach_server(alice_srv)
            message = alice.mls.encrypt(group_id, b"not stalled").message
            via_server = alice_srv.via_server(group_id, alice.mls.epoch(group_id), message)
            # A bound on the test, not a measurement: the old path waited an hour.
            report = await asyncio.wait_for(alice_node.send(message, via_server=via_server), 60)
            assert report.direct == ()
            assert report.via_server
            assert [(f.recipient, f.reason) for f in report.failed] == [
                (bob.key, "no acknowledgement within 1 s")
            ]
            # The server has it, and Bob reads it from there...
            assert await bob_srv.receive(bob) == 1
            assert bob.texts == [(alice.key, b"not stalled")]
            # ...while the direct attempt is still under way: it dialed
            # the black hole, and has neither succeeded nor failed.
            assert hole.received > 0
            (seen,) = alice_node.peers()
            assert (seen.reachable, seen.last_error, seen.connected) == (None, None, False)
        # Closing the node ends the late attempt.


async def test_only_ip_literals_are_dialed_a_few_per_peer() -> None:
    # A resolver that offers names (which would reach Bob if resolved)
    # and more addresses than a peer gets: names are never dialed, and
    # only the first four addresses are.
    (alice, bob), group_id = build_group(2)
    book = AddressBook()
    async with nodes([alice, bob], book) as (alice_node, bob_node):
        real = book.addresses[bob.key][0]
        dead = [PeerAddress("127.0.0.1", 9 + i, AddressSource.STATIC) for i in range(5)]
        book.addresses[bob.key] = [
            PeerAddress("localhost", bob_node.port, AddressSource.STATIC),
            PeerAddress("bob.example", bob_node.port, AddressSource.STATIC),
            real,
            *dead,
        ]
        message = alice.mls.encrypt(group_id, b"by number").message
        report = await alice_node.send(message, via_server=never)
        assert report == SendReport(direct=(bob.key,), failed=(), via_server=False)
        (seen,) = [p for p in alice_node.peers() if p.identity_key == bob.key]
        assert seen.addresses == (real, *dead[:3])
    # Offered names alone, nothing is dialed: the message goes through the server.
    book.addresses[bob.key] = [PeerAddress("localhost", 1, AddressSource.STATIC)]
    async with nodes([alice], book) as (alice_node,):
        published: list[bytes] = []

        async def via_server() -> None:
            published.append(b"sent")

        message = alice.mls.encrypt(group_id, b"no name lookups").message
        report = await alice_node.send(message, via_server=via_server)
        assert report.via_server
        assert published == [b"sent"]
        assert "no address" in report.failed[0].reason


async def _unproven_from(
    source: str, port: int
) -> tuple[asyncio.DatagramTransport, QuicConnectionProtocol]:
    """A QUIC connection to ``port`` from ``source`` that completes its handshake, then idles."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=[PEER_ALPN], idle_timeout=120.0
    )
    configuration.verify_mode = ssl.CERT_NONE
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: QuicConnectionProtocol(QuicConnection(configuration=configuration)),
        local_addr=(source, 0),
    )
    protocol.connect((LOCAL, port))
    try:
        await asyncio.wait_for(protocol.wait_connected(), 30)
    except BaseException:
        transport.close()
        raise
    return transport, protocol


async def test_a_full_listener_evicts_its_oldest_unproven_connection() -> None:
    # Eight source addresses, eight connections each (the per-address cap),
    # fill Bob's 64 slots and prove nothing. Alice, a member, must still
    # get through: the oldest unproven connection makes room for her.
    (alice, bob), group_id = build_group(2)
    patient = replace(CONFIG, authenticate_timeout_seconds=120.0)
    book = AddressBook()
    async with nodes([bob, alice], book, patient) as (bob_node, alice_node):
        sources = [f"127.0.0.{2 + i}" for i in range(8)]
        sockets: list[asyncio.DatagramTransport] = []
        squatters: list[QuicConnectionProtocol] = []
        try:
            for source in sources:
                for _ in range(patient.max_connections_per_address):
                    transport, squatter = await _unproven_from(source, bob_node.port)
                    sockets.append(transport)
                    squatters.append(squatter)
            assert len(squatters) == patient.max_connections
            message = alice.mls.encrypt(group_id, b"room for a member").message
            report = await alice_node.send(message, via_server=never)
            assert report == SendReport(direct=(bob.key,), failed=(), via_server=False)
            assert bob.texts == [(alice.key, b"room for a member")]
            # The first squatter was the one closed.
            await asyncio.wait_for(squatters[0].wait_closed(), 30)
            assert squatters[0]._quic._close_event is not None
            assert squatters[0]._quic._close_event.reason_phrase.startswith("too many connections")
        finally:
            for squatter in squatters:
                squatter.close()
            for transport in sockets:
                transport.close()
