"""What answers cost: rate-limit tokens by their size, room held only while they are produced.

The memory bound itself (clients that ask and never read) is tested with
the fault harness, where ``tox -e soak`` scales it up
(packages/qpq-client/tests/test_faults_hostile.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import pytest
from groups import build_group, connections, drain, members, send

from qpq_proto import DEFAULT_LIMITS, Fetch, FetchWait, Health, Request, encode_request
from qpq_proto.errors import RateLimitedError
from qpq_proto.quic._transport import _Stream
from qpq_server.testing import CallClient, ServerProcess

MIB = 1024 * 1024


async def test_a_fetch_is_charged_by_the_bytes_it_returns(tmp_path: Path) -> None:
    # A bucket of 100 tokens that refills slowly: one token per 64 KiB of answer
    # makes a fetch of 7 MiB cost more than the whole burst.
    env = {"QPQ_RATE_PER_SECOND": "0.5", "QPQ_RATE_BURST": "100"}
    with ServerProcess(tmp_path, extra_env=env) as server:
        reader, sender = members(2)
        group_id = await build_group(server, sender, reader)
        async with connections(server, reader, sender) as (reading, sending):
            for _ in range(7):
                await send(sending, sender, group_id, bytes(MIB - 4096))
            small = (await reading.call(Fetch(limit=1))).messages
            assert len(small) == 1  # about 1 MiB: 16 tokens
            assert len((await reading.call(Fetch(limit=1000))).messages) == 7
            # The identity is in debt now; other identities are not.
            with pytest.raises(RateLimitedError, match="identity"):
                await reading.call(Fetch(limit=1))
            assert (await sending.call(Fetch(limit=1))).messages == ()
            assert (await reading.call(Health())).status == "ok"


async def test_long_polls_hold_no_room_for_their_answers_while_they_wait(
    tmp_path: Path,
) -> None:
    # Room for one whole answer (8 MiB) per connection, little more.
    env = {
        "QPQ_RATE_PER_SECOND": "100000",
        "QPQ_RATE_BURST": "100000",
        "QPQ_ANSWER_WINDOW_BYTES": str(9 * MIB),
        "QPQ_MAX_FETCH_WAIT_MS": "60000",
    }
    with ServerProcess(tmp_path, extra_env=env) as server:
        reader, sender = members(2)
        group_id = await build_group(server, sender, reader)
        async with connections(server, reader, sender) as (reading, sending):
            polls = [
                asyncio.create_task(reading.call(FetchWait(limit=10, timeout_ms=60_000)))
                for _ in range(3)
            ]
            # Waiting long polls hold no room for whole answers: a fetch on the
            # same connection is served at once, not after one of them ends.
            fetch = asyncio.create_task(reading.call(Fetch(limit=10)))
            done, _pending = await asyncio.wait(
                [fetch, *polls], return_when=asyncio.FIRST_COMPLETED
            )
            assert done == {fetch}
            assert fetch.result().messages == ()
            # A message wakes them; each reserves room before it reads, in turn.
            payload = await send(sending, sender, group_id, b"wake up")
            for poll in polls:
                assert [m.payload for m in (await poll).messages] == [payload]


def fetch_and_never_read(client: CallClient, calls: int) -> None:
    """Open ``calls`` Fetch streams on ``client`` whose answers nothing here takes."""
    protocol = client.protocol
    request = encode_request(Request(call=Fetch(limit=1000), token=client.token))
    for _ in range(calls):
        stream_id = protocol._quic.get_next_available_stream_id()
        protocol.streams[stream_id] = _Stream(None)
        protocol._quic.send_stream_data(stream_id, request, end_stream=True)
    protocol.transmit()


async def test_a_small_fetch_is_not_kept_behind_large_answers_nobody_reads(
    tmp_path: Path,
) -> None:
    # A budget of two whole answers, and unread answers kept for long: a
    # Fetch that waited for room would be served only after a stall reset.
    env = {
        "QPQ_RATE_PER_SECOND": "100000",
        "QPQ_RATE_BURST": "100000",
        "QPQ_ANSWER_BUDGET_BYTES": str(16 * MIB),
        "QPQ_ANSWER_STALL_SECONDS": "60",
    }
    small_windows = dataclasses.replace(
        DEFAULT_LIMITS, max_payload_bytes=64 * 1024, max_message_bytes=128 * 1024
    )
    with ServerProcess(tmp_path, extra_env=env) as server:
        hoarder, reader, sender = members(3)
        group_id = await build_group(server, sender, hoarder, reader)
        async with contextlib.AsyncExitStack() as stack:
            sending, reading = await stack.enter_async_context(connections(server, sender, reader))
            for _ in range(7):
                await send(sending, sender, group_id, bytes(MIB - 4096))
            # The reader takes its share now; from here on it has one small message.
            assert len(await drain(reading)) == 7
            attackers = []
            for _ in range(4):
                attacker = await stack.enter_async_context(server.connect(limits=small_windows))
                await attacker.authenticate(hoarder.identity)
                fetch_and_never_read(attacker, 4)
                attackers.append(attacker)
            # The budget is taken once answers reached the attackers (and stopped there).
            while not any(s.queued for a in attackers for s in a.protocol.streams.values()):
                await asyncio.wait_for(reading.protocol.ping(), 10)
            payload = await send(sending, sender, group_id, b"small")
            answer = await asyncio.wait_for(reading.call(Fetch(limit=10)), 30)
            assert [m.payload for m in answer.messages] == [payload]
            # Served while every unread answer was still held, none reset yet.
            assert "took none of an answer in time" not in server.log()
