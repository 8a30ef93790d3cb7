"""What a peer can make the server hold below qpq: QUIC receive buffers and their windows.

A hostile client places single STREAM bytes at the far end of the credit
the server granted (the gap before them is reassembly buffer the server
must keep). aioquic used to double its windows for such bytes, read or
not; the server's RSS (``VmHWM``, its peak, from /proc) shows what it held.
Each round trip is synchronised by a PING the server acknowledges.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import pytest
from groups import build_group, connections, members, send
from server_helpers import authed

import qpq_core
from qpq_proto import (
    Endpoint,
    ErrorCode,
    Fetch,
    Health,
    PublishEndpoints,
    ResolveEndpoints,
    decode_response,
)
from qpq_server.testing import CallClient, RunningServer, ServerProcess

MIB = 1024 * 1024
#: Most the attacks below may add to the server's peak RSS.
RSS_BOUND = 48 * MIB

ENV = {"QPQ_RATE_PER_SECOND": "100000", "QPQ_RATE_BURST": "100000"}


def rss(server: RunningServer, field: str = "VmRSS") -> int:
    """The server process's resident (``VmRSS``) or peak resident (``VmHWM``) bytes."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{server.process.pid}/status")


def credit(client: CallClient, stream_id: int) -> int:
    """The highest offset the server lets ``stream_id`` reach."""
    quic = client.protocol._quic
    return int(quic._get_or_create_stream_for_send(stream_id).max_stream_data_remote)


def connection_credit_left(client: CallClient) -> int:
    """Stream bytes the server still accepts on this connection, as it counts them."""
    quic = client.protocol._quic
    return int(quic._remote_max_data - quic._remote_max_data_used)


def place(
    client: CallClient, stream_id: int, offset: int, data: bytes, *, past_credit: bool = False
) -> None:
    """Send ``data`` at ``offset`` of ``stream_id``, with nothing before it."""
    quic = client.protocol._quic
    stream = quic._get_or_create_stream_for_send(stream_id)
    sender = stream.sender
    # The server counts the skipped bytes against the connection's credit (RFC
    # 9000 section 4.5: the highest offset received), and so does this client.
    quic._remote_max_data_used += max(0, offset - sender.highest_offset)
    sender._buffer = bytearray()
    sender._buffer_start = sender._buffer_stop = offset
    sender.highest_offset = max(sender.highest_offset, offset)
    if past_credit:
        stream.max_stream_data_remote = offset + len(data)
        quic._remote_max_data = max(quic._remote_max_data, quic._remote_max_data_used + len(data))
    sender.write(data)
    client.protocol.transmit()


async def round_trip(client: CallClient) -> None:
    """Return once the server processed all sent so far (its ACK of a PING came back)."""
    await asyncio.wait_for(client.protocol.ping(), 10)


async def attack(client: CallClient, streams: int, rounds: int) -> None:
    """One byte at the end of each stream's credit (and the connection's), ``rounds`` times."""
    first = client.protocol._quic.get_next_available_stream_id()
    stream_ids = [first + 4 * i for i in range(streams)]
    for _ in range(rounds):
        for stream_id in stream_ids:
            highest = client.protocol._quic._get_or_create_stream_for_send(stream_id).sender
            offset = (
                min(
                    credit(client, stream_id),
                    highest.highest_offset + connection_credit_left(client),
                )
                - 1
            )
            if offset >= highest.highest_offset:
                place(client, stream_id, offset, b"x")
        await round_trip(client)


async def closed_reason(client: CallClient) -> str | None:
    await asyncio.wait_for(client.wait_closed(), 20)
    return client.closed_reason


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with ServerProcess(tmp_path_factory.mktemp("bounds"), extra_env=ENV) as running:
        yield running


async def test_bytes_at_the_end_of_the_window_do_not_grow_the_server(
    server: RunningServer,
) -> None:
    me, peer = members(2)
    group_id = await build_group(server, me, peer)
    before = rss(server)
    async with connections(server, me, peer) as (bystander, peer_client):
        attackers = [server.connect() for _ in range(4)]
        clients = [await attacker.__aenter__() for attacker in attackers]
        try:
            await asyncio.gather(*(attack(client, streams=4, rounds=6) for client in clients))
            grown = rss(server, "VmHWM") - before
            print(f"server RSS before {before / MIB:.1f} MiB, peak growth {grown / MIB:.1f} MiB")
            assert grown < RSS_BOUND
            # No credit was granted for bytes nobody took: every window is
            # where the handshake put it (a stream: max_message_bytes; the
            # connection, before Authenticate: unauthenticated_buffer_bytes).
            for client in clients:
                for stream_id in list(client.protocol._quic._streams):
                    assert credit(client, stream_id) == 8 * MIB
                assert client.protocol._quic._remote_max_data == 64 * 1024
            # The well-behaved clients on their own connections are served meanwhile.
            await send(bystander, me, group_id, bytes(MIB // 2))
            payload = await send(peer_client, peer, group_id, bytes(MIB // 2))
            assert (await bystander.call(Fetch(limit=1))).messages[0].payload == payload
            # Past the credit is a flow-control violation: the connection is closed.
            victim = clients[0]
            stream_id = next(iter(victim.protocol._quic._streams))
            place(victim, stream_id, credit(victim, stream_id), b"y", past_credit=True)
            assert await closed_reason(victim) == "Over stream data limit"
            assert (await bystander.call(Health())).status == "ok"
        finally:
            for attacker in attackers:
                await attacker.__aexit__(None, None, None)


async def test_an_authenticated_connection_holds_at_most_its_window(
    server: RunningServer,
) -> None:
    before = rss(server)
    async with authed(server, qpq_core.Identity.generate()) as attacker:
        granted = attacker.protocol._quic._remote_max_data
        assert 16 * MIB <= granted <= 16 * MIB + 64 * 1024  # taken so far + the window
        await attack(attacker, streams=4, rounds=6)
        grown = rss(server, "VmHWM") - before
        print(f"authenticated: peak growth {grown / MIB:.1f} MiB")
        assert grown < RSS_BOUND
        assert attacker.protocol._quic._remote_max_data == granted
        # The attacker's own calls wait for credit now; resetting its streams
        # gives the credit back (what they held will never be read).
        assert connection_credit_left(attacker) < 64 * 1024
        for stream_id in list(attacker.protocol._quic._streams):
            attacker.protocol._quic.reset_stream(stream_id, 0)
        attacker.protocol.transmit()
        assert (await attacker.call(Health())).status == "ok"
        assert attacker.protocol._quic._remote_max_data > granted


async def test_the_shared_budget_closes_the_largest_holder(tmp_path: Path) -> None:
    env = {
        **ENV,
        "QPQ_RECEIVE_WINDOW_BYTES": str(16 * MIB),
        "QPQ_RECEIVE_BUDGET_BYTES": str(24 * MIB),
    }
    with ServerProcess(tmp_path, extra_env=env) as budgeted:
        async with (
            authed(budgeted, qpq_core.Identity.generate()) as large,
            authed(budgeted, qpq_core.Identity.generate()) as small,
        ):
            await attack(large, streams=2, rounds=1)  # 16 MiB held
            assert connection_credit_left(large) < 64 * 1024
            first = small.protocol._quic.get_next_available_stream_id()
            for stream_id in (first, first + 4):  # 10 MiB more: over the 24 MiB budget
                place(small, stream_id, 5 * MIB - 1, b"x")
            await round_trip(small)
            assert await closed_reason(large) == "receive buffers over the budget of this endpoint"
            assert small.closed_reason is None
            assert (await small.call(Health())).status == "ok"


async def test_a_connection_that_does_not_authenticate_in_time_is_closed(
    tmp_path: Path,
) -> None:
    env = {**ENV, "QPQ_AUTHENTICATE_TIMEOUT_SECONDS": "1"}
    with ServerProcess(tmp_path, extra_env=env) as strict:
        async with (
            authed(strict, qpq_core.Identity.generate()) as proven,
            strict.connect() as idle,
        ):
            # Before Authenticate, what a connection may buffer is small.
            header = struct.pack("<II", 0, (900 * 1024) // 8)
            answer = await idle.raw(header + bytes(100 * 1024), end_stream=False)
            assert decode_response(answer).code is ErrorCode.PAYLOAD_TOO_LARGE
            assert await closed_reason(idle) == "no identity proven within 1 s"
            # Opened together, the proven one is still served.
            assert (await proven.call(Health())).status == "ok"
            assert proven.closed_reason is None
        # A Health-only probe is done well within the deadline.
        async with strict.connect() as probe:
            assert (await probe.call(Health())).status == "ok"


class _Relay(asyncio.DatagramProtocol):
    """A socket on another loopback address: what arrives is handed to ``deliver``, if set."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.deliver: Any = None
        self.sent = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.deliver is not None:
            self.deliver(data, addr)

    def sendto(self, data: bytes, addr: Any = None) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)
        self.sent.set()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _relay_on(address: str) -> _Relay:
    _transport, relay = await asyncio.get_running_loop().create_datagram_endpoint(
        _Relay, local_addr=(address, 0)
    )
    return relay


async def _observed(client: CallClient, identity: qpq_core.Identity) -> str:
    """The address the server recorded for this connection's last PublishEndpoints."""
    resolved = await client.call(ResolveEndpoints(identity_key=identity.public_key))
    assert resolved.observed is not None
    return str(resolved.observed.host)


PUBLISH = PublishEndpoints(endpoints=(Endpoint(host="192.0.2.1", port=5000),))


async def test_datagrams_from_a_spoofed_address_do_not_move_the_connection(
    server: RunningServer,
) -> None:
    identity = qpq_core.Identity.generate()
    async with authed(server, identity) as client:
        await client.call(PUBLISH)
        assert await _observed(client, identity) == "127.0.0.1"
        # Packets of this connection, sent from 127.0.0.2 by someone who cannot
        # receive there: the server must not take that address for the peer's.
        spoofer = await _relay_on("127.0.0.2")
        own = client.protocol._transport
        client.protocol._transport = spoofer
        publish = asyncio.create_task(client.call(PUBLISH))
        await asyncio.wait_for(spoofer.sent.wait(), 10)
        client.protocol._transport = own  # retransmissions leave from the real address
        await asyncio.wait_for(publish, 30)
        assert await _observed(client, identity) == "127.0.0.1"
        spoofer.close()


async def test_a_validated_migration_moves_the_connection(server: RunningServer) -> None:
    identity = qpq_core.Identity.generate()
    async with authed(server, identity) as client:
        await client.call(PUBLISH)
        assert await _observed(client, identity) == "127.0.0.1"
        # The client really moved: it sends and receives on 127.0.0.3 from now on.
        moved = await _relay_on("127.0.0.3")
        moved.deliver = client.protocol.datagram_received
        own, client.protocol._transport = client.protocol._transport, moved
        own.close()
        # The first call on the new path carries the server's PATH_CHALLENGE
        # back; the client's PATH_RESPONSE leaves before the next request.
        assert (await client.call(Health())).status == "ok"
        assert (await client.call(Health())).status == "ok"
        await client.call(PUBLISH)
        assert await _observed(client, identity) == "127.0.0.3"
