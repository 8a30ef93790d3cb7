"""Races that must stay correct: claims, commits, long-polls and pushes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from groups import (
    Member,
    build_group,
    commit_hash,
    connections,
    fetch_all,
    members,
    plaintexts,
    process,
    publish_commit,
    send,
)
from server_helpers import authed, key_packages

import qpq_core
from qpq_proto import (
    Ack,
    Envelope,
    FetchKeyPackage,
    FetchWait,
    Health,
    UploadKeyPackages,
)
from qpq_proto.errors import EpochConflictError, NotFoundError, ServiceError
from qpq_server.testing import RunningServer


async def test_fifty_concurrent_claims_of_ten_packages(server: RunningServer) -> None:
    owner = qpq_core.Identity.generate()
    packages = key_packages(owner, 10)
    async with authed(server, owner) as client:
        await client.call(UploadKeyPackages(packages=packages))

    async def claim() -> bytes | None:
        async with authed(server, qpq_core.Identity.generate()) as client:
            try:
                return (await client.call(FetchKeyPackage(identity_key=owner.public_key))).package  # type: ignore[no-any-return]
            except NotFoundError:
                return None

    results = await asyncio.gather(*(claim() for _ in range(50)))
    served = [r for r in results if r is not None]
    assert len(served) == 10
    assert sorted(served) == sorted(packages)  # each exactly once


async def test_two_concurrent_commits_for_one_epoch(server: RunningServer) -> None:
    alice, bob = members(2)
    group_id = await build_group(server, alice, bob)
    commits = {alice: alice.mls.self_update(group_id), bob: bob.mls.self_update(group_id)}
    assert commits[alice].epoch == commits[bob].epoch == 1

    conflicts: list[EpochConflictError] = []

    async def publish(member: Member) -> str:
        async with authed(server, member.identity) as client:
            try:
                await publish_commit(client, member, commits[member])
            except EpochConflictError as conflict:
                conflicts.append(conflict)
                return "conflict"
            return "accepted"

    def winner(loser: Member) -> Member:
        return bob if loser is alice else alice

    outcomes = await asyncio.gather(publish(alice), publish(bob))
    assert sorted(outcomes) == ["accepted", "conflict"]
    loser = alice if outcomes[0] == "conflict" else bob
    (conflict,) = conflicts
    assert conflict.accepted_commit == commit_hash(commits[winner(loser)])
    # Only the accepted commit reached the queues: the loser's holds it, the winner's nothing.
    async with authed(server, loser.identity) as client:
        (message,) = (await client.call(FetchWait(limit=10, timeout_ms=0))).messages
        assert message.payload == commits[winner(loser)].commit
        process(loser, [message])
    async with authed(server, winner(loser).identity) as client:
        assert await fetch_all(client) == ()
    assert alice.exporter(group_id) == bob.exporter(group_id)


async def pair(server: RunningServer) -> tuple[Member, Member, bytes]:
    """A reader and a writer in one group, the reader's queue empty."""
    reader, writer = members(2)
    return reader, writer, await build_group(server, writer, reader)


async def test_fetch_wait_wakes_when_a_message_arrives(server: RunningServer) -> None:
    reader, writer, group_id = await pair(server)
    long_timeout_ms = 25_000
    async with connections(server, reader, writer) as (reader_client, writer_client):
        started = time.monotonic()
        waiting = asyncio.create_task(
            reader_client.call(FetchWait(limit=10, timeout_ms=long_timeout_ms))
        )
        await asyncio.sleep(0)  # the task sends its FetchWait stream now
        # A round trip behind it on the same connection (and the same storage
        # thread) means the long-poll has read its empty queue and is parked.
        await reader_client.call(Health())
        assert not waiting.done()
        await send(writer_client, writer, group_id, b"wake up")
        result = await asyncio.wait_for(waiting, long_timeout_ms / 1000)
        elapsed = time.monotonic() - started
    assert plaintexts(process(reader, result.messages)) == [b"wake up"]
    assert elapsed < long_timeout_ms / 1000 / 2  # returned on the wake-up, not the timeout


async def test_fetch_wait_times_out_empty(
    server: RunningServer, identity: qpq_core.Identity
) -> None:
    async with authed(server, identity) as client:
        assert (await client.call(FetchWait(limit=10, timeout_ms=50))).messages == ()


async def test_subscribe_sends_backlog_then_pushes(server: RunningServer) -> None:
    reader, writer, group_id = await pair(server)

    async def pushed_text(events: AsyncIterator[Envelope]) -> Envelope:
        event = await asyncio.wait_for(anext(events), 10)
        assert isinstance(event, Envelope)
        return event

    async with authed(server, writer.identity) as writer_client:
        await send(writer_client, writer, group_id, b"backlog")
        async with (
            authed(server, reader.identity) as reader_client,
            reader_client.subscribe() as events,
        ):
            first = await pushed_text(events)
            assert plaintexts(process(reader, [first])) == [b"backlog"]
            for i in range(3):
                await send(writer_client, writer, group_id, b"p%d" % i)
                pushed = await pushed_text(events)
                assert plaintexts(process(reader, [pushed])) == [b"p%d" % i]
            # Acknowledging does not disturb the stream.
            await reader_client.call(Ack(up_to_seq=pushed.seq))
            await send(writer_client, writer, group_id, b"after ack")
            after = await pushed_text(events)
            assert plaintexts(process(reader, [after])) == [b"after ack"]
            assert after.seq > pushed.seq


async def test_slow_call_does_not_block_other_streams(server: RunningServer) -> None:
    reader, writer, group_id = await pair(server)
    async with connections(server, reader, writer) as (client, writer_client):
        parked = asyncio.create_task(client.call(FetchWait(limit=1, timeout_ms=20_000)))
        await asyncio.sleep(0)
        # Other calls on the same connection are answered while the long-poll waits.
        for _ in range(5):
            with contextlib.suppress(ServiceError):
                await client.call(FetchKeyPackage(identity_key=bytes(32)))
        assert not parked.done()
        await send(writer_client, writer, group_id, b"done")
        (done,) = (await asyncio.wait_for(parked, 20)).messages
        assert plaintexts(process(reader, [done])) == [b"done"]
