"""What a peer can make a listener hold: bounded, as on the server.

The listener runs in its own process; its peak resident memory (``VmHWM``
from /proc) shows what it held. The attacker places single STREAM bytes at
the far end of the credit it was granted (the gap before them is buffer
the receiver must keep), on several connections and streams, synchronised
by PINGs the listener acknowledges; and sends a request that never ends.
Requests left unfinished are cut off at their deadline, as on the server.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from p2p_helpers import CONFIG, LOCAL, AddressBook, build_group, nodes

from qpq_p2p import DialerProof
from qpq_proto import (
    DEFAULT_LIMITS,
    PEER_ALPN,
    ChallengeNonce,
    Done,
    ErrorCode,
    ErrorResponse,
    PeerChallenge,
    PeerDeliver,
    PeerProof,
    Request,
    decode_response,
)
from qpq_proto.quic import Transport

MIB = 1024 * 1024
#: Most the attack may add to the listener's peak RSS.
RSS_BOUND = 32 * MIB
#: The listener's defaults (PeerConfig): QUIC credit before a proof, per stream.
UNPROVEN_WINDOW = 64 * 1024
STREAM_WINDOW = DEFAULT_LIMITS.max_message_bytes


@asynccontextmanager
async def listener_process() -> AsyncIterator[tuple[int, int]]:
    """(pid, port) of a peer node running in a subprocess."""
    script = Path(__file__).with_name("listener_process.py")
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        yield process.pid, int(line)
    finally:
        process.stdin.close()
        await asyncio.wait_for(process.wait(), 30)


def rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def place(transport: Transport, stream_id: int, offset: int, data: bytes) -> None:
    """Send ``data`` at ``offset`` of ``stream_id``, with nothing before it."""
    quic = transport.quic._quic
    stream = quic._get_or_create_stream_for_send(stream_id)
    sender = stream.sender
    # Both ends count the skipped bytes against the connection's credit (RFC
    # 9000 section 4.5: the highest offset received).
    quic._remote_max_data_used += max(0, offset - sender.highest_offset)
    sender._buffer = bytearray()
    sender._buffer_start = sender._buffer_stop = offset
    sender.highest_offset = max(sender.highest_offset, offset)
    sender.write(data)
    transport.quic.transmit()


async def attack(transport: Transport, streams: int, rounds: int) -> None:
    """One byte at the end of each stream's credit (and the connection's), ``rounds`` times."""
    quic = transport.quic._quic
    first = quic.get_next_available_stream_id()
    for _ in range(rounds):
        for stream_id in range(first, first + 4 * streams, 4):
            stream = quic._get_or_create_stream_for_send(stream_id)
            left = quic._remote_max_data - quic._remote_max_data_used
            offset = min(stream.max_stream_data_remote, stream.sender.highest_offset + left) - 1
            if offset >= stream.sender.highest_offset:
                place(transport, stream_id, offset, b"x")
        await asyncio.wait_for(transport.quic.ping(), 10)


async def connect(port: int) -> Transport:
    return await Transport.open(
        LOCAL, port, alpn=PEER_ALPN, in_band_identity_proof=True, connect_timeout=10
    )


async def test_an_unauthenticated_peer_cannot_make_a_listener_grow() -> None:
    async with listener_process() as (pid, port):
        before = rss(pid, "VmRSS")
        attackers = [await connect(port) for _ in range(4)]
        try:
            await asyncio.gather(*(attack(a, streams=4, rounds=6) for a in attackers))
            # A request that never ends is refused once it passes what an
            # unproven connection may have buffered.
            endless = await connect(port)
            attackers.append(endless)
            header = struct.pack("<II", 0, (900 * 1024) // 8)
            answer = await endless.raw(header + bytes(200 * 1024), end_stream=False)
            assert decode_response(answer).code is ErrorCode.PAYLOAD_TOO_LARGE
            grown = rss(pid, "VmHWM") - before
            print(f"listener RSS before {before / MIB:.1f} MiB, peak growth {grown / MIB:.1f} MiB")
            assert grown < RSS_BOUND
            # No credit was granted for bytes nobody took: the connection's is
            # where the handshake put it, each stream's too.
            for attacker in attackers[:4]:
                quic = attacker.quic._quic
                assert quic._remote_max_data == UNPROVEN_WINDOW
                for stream_id in list(quic._streams):
                    stream = quic._get_or_create_stream_for_send(stream_id)
                    assert stream.max_stream_data_remote == STREAM_WINDOW
            # Past the credit is a flow-control violation: the connection is closed.
            victim = attackers[1]
            quic = victim.quic._quic
            stream_id = next(iter(quic._streams))
            quic._remote_max_data += 1
            place(victim, stream_id, quic._remote_max_data - 1, b"y")
            await asyncio.wait_for(victim.wait_closed(), 20)
            assert victim.closed_reason == "Over connection data limit"
            # A newcomer is still served.
            newcomer = await connect(port)
            await newcomer.close()
        finally:
            for attacker in attackers:
                await attacker.close()


def _refusal(answer: bytes) -> ErrorResponse:
    response = decode_response(answer)
    assert isinstance(response, ErrorResponse), response
    return response


async def test_unfinished_requests_are_capped_and_cut_off_in_time() -> None:
    # Two requests that each declare 900 KiB, each left open after 40 KiB:
    # together over what an unproven connection may have buffered (64 KiB).
    # Without a deadline the one that fits would hold its bytes until the
    # connection's idle timeout.
    (_alice, bob), _group = build_group(2)
    async with nodes([bob], AddressBook(), request_timeout_seconds=0.5) as (bob_node,):
        link = await connect(bob_node.port)
        try:
            header = struct.pack("<II", 0, (900 * 1024) // 8)
            partial = header + bytes(40 * 1024)
            answers = await asyncio.wait_for(
                asyncio.gather(
                    link.raw(partial, end_stream=False), link.raw(partial, end_stream=False)
                ),
                20,
            )
            # One is refused when the budget runs out; the other, never
            # finished, is cut off at the request deadline.
            refusals = sorted((_refusal(answer) for answer in answers), key=lambda r: r.code)
            assert [refusal.code for refusal in refusals] == [
                ErrorCode.PAYLOAD_TOO_LARGE,
                ErrorCode.MALFORMED_REQUEST,
            ]
            assert refusals[1].message == "the request did not arrive in full within 0.5 s"
            # Neither holds its bytes any more: 40 KiB more fit, and are cut off too.
            again = _refusal(await link.raw(partial, end_stream=False))
            assert again.code is ErrorCode.MALFORMED_REQUEST
            nonce = await link.call(Request(PeerChallenge()), answer_within=10)
            assert isinstance(nonce, ChallengeNonce)
        finally:
            await link.close()


async def test_a_member_cannot_queue_more_host_work_than_its_budget() -> None:
    # A proven member's delivery stays counted until the host is done with
    # it, even when the member stopped waiting for the answer.
    (alice, bob), group_id = build_group(2)
    bob.hold = asyncio.Event()
    tight = replace(CONFIG, receive_window_bytes=DEFAULT_LIMITS.max_message_bytes)  # 8 MiB
    async with nodes([bob], AddressBook(), tight) as (bob_node,):
        link = await connect(bob_node.port)
        try:
            proof = DialerProof(alice.identity, alice.mls, bob.key, link.peer_certificate_der())
            nonce = await link.call(Request(PeerChallenge()), answer_within=10)
            assert isinstance(nonce, ChallengeNonce)
            answer = await link.call(Request(proof.authenticate(nonce)), answer_within=10)
            assert isinstance(answer, PeerProof)
            first, second, third = (
                alice.mls.encrypt(group_id, bytes(size)).message
                for size in (9 * MIB // 2, 4 * MIB, 4 * MIB)
            )
            waiting = asyncio.create_task(link.call(Request(PeerDeliver(first)), answer_within=60))
            await asyncio.wait_for(bob.entered.wait(), 30)  # all of it is with Bob's host now
            waiting.cancel()  # Alice stops waiting: the stream is abandoned
            with pytest.raises(asyncio.CancelledError):
                await waiting
            answer = await link.call(Request(PeerDeliver(second)), answer_within=30)
            assert isinstance(answer, ErrorResponse)
            assert answer.code is ErrorCode.PAYLOAD_TOO_LARGE
            # Once the host is done with the first, there is room again.
            bob.hold.set()
            await asyncio.wait_for(bob.persisted.wait(), 30)
            assert await link.call(Request(PeerDeliver(third)), answer_within=30) == Done()
            assert [len(text) for _sender, text in bob.texts] == [9 * MIB // 2, 4 * MIB]
        finally:
            await link.close()
