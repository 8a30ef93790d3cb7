"""Races that must stay correct: claims, commits, long-polls and pushes."""

from __future__ import annotations

import asyncio
import contextlib
import time

from server_helpers import authed, key_packages

import qpq_core
from qpq_proto import (
    Ack,
    Enqueue,
    Envelope,
    FetchKeyPackage,
    FetchWait,
    Health,
    MessageKind,
    Publish,
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
    alice_id, bob_id = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    alice, bob = qpq_core.MlsClient(alice_id), qpq_core.MlsClient(bob_id)
    group_id = alice.create_group().group_id
    bundle = alice.add_members(group_id, [bob.create_key_packages(1).packages[0]])
    alice.merge_pending_commit(group_id)
    assert bundle.welcome is not None
    bob.join_from_welcome(bundle.welcome)
    commits = [(alice_id, alice.self_update(group_id)), (bob_id, bob.self_update(group_id))]
    assert commits[0][1].epoch == commits[1][1].epoch == 1
    recipients = (alice_id.public_key, bob_id.public_key)

    async def publish(sender: qpq_core.Identity, commit: bytes) -> str:
        async with authed(server, sender) as client:
            try:
                await client.call(
                    Publish(
                        group_id=group_id,
                        epoch=1,
                        kind=MessageKind.COMMIT,
                        payload=commit,
                        recipients=recipients,
                    )
                )
            except EpochConflictError:
                return "conflict"
            return "accepted"

    outcomes = await asyncio.gather(*(publish(s, c.commit) for s, c in commits))
    assert sorted(outcomes) == ["accepted", "conflict"]
    # Only the accepted commit reached the queues.
    async with authed(server, alice_id) as client:
        (message,) = (await client.call(FetchWait(limit=10, timeout_ms=0))).messages
    assert message.payload in {c.commit for _s, c in commits}


async def test_fetch_wait_wakes_when_a_message_arrives(server: RunningServer) -> None:
    reader, writer = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    long_timeout_ms = 25_000
    async with authed(server, reader) as reader_client, authed(server, writer) as writer_client:
        started = time.monotonic()
        waiting = asyncio.create_task(
            reader_client.call(FetchWait(limit=10, timeout_ms=long_timeout_ms))
        )
        await asyncio.sleep(0)  # the task sends its FetchWait stream now
        # A round trip behind it on the same connection (and the same storage
        # thread) means the long-poll has read its empty queue and is parked.
        await reader_client.call(Health())
        assert not waiting.done()
        await writer_client.call(Enqueue(recipient=reader.public_key, payload=b"wake up"))
        result = await asyncio.wait_for(waiting, long_timeout_ms / 1000)
        elapsed = time.monotonic() - started
    assert [m.payload for m in result.messages] == [b"wake up"]
    assert elapsed < long_timeout_ms / 1000 / 2  # returned on the wake-up, not the timeout


async def test_fetch_wait_times_out_empty(
    server: RunningServer, identity: qpq_core.Identity
) -> None:
    async with authed(server, identity) as client:
        assert (await client.call(FetchWait(limit=10, timeout_ms=50))).messages == ()


async def test_subscribe_sends_backlog_then_pushes(server: RunningServer) -> None:
    reader, writer = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    async with authed(server, writer) as writer_client:
        await writer_client.call(Enqueue(recipient=reader.public_key, payload=b"backlog"))
        async with authed(server, reader) as reader_client, reader_client.subscribe() as events:
            first = await asyncio.wait_for(anext(events), 10)
            assert isinstance(first, Envelope)
            assert first.payload == b"backlog"
            for i in range(3):
                await writer_client.call(Enqueue(recipient=reader.public_key, payload=b"p%d" % i))
                pushed = await asyncio.wait_for(anext(events), 10)
                assert isinstance(pushed, Envelope)
                assert pushed.payload == b"p%d" % i
            # Acknowledging does not disturb the stream.
            await reader_client.call(Ack(up_to_seq=pushed.seq))
            await writer_client.call(Enqueue(recipient=reader.public_key, payload=b"after ack"))
            after = await asyncio.wait_for(anext(events), 10)
            assert isinstance(after, Envelope)
            assert after.payload == b"after ack"
            assert after.seq > pushed.seq


async def test_slow_call_does_not_block_other_streams(server: RunningServer) -> None:
    identity = qpq_core.Identity.generate()
    async with authed(server, identity) as client:
        parked = asyncio.create_task(client.call(FetchWait(limit=1, timeout_ms=20_000)))
        await asyncio.sleep(0)
        # Other calls on the same connection are answered while the long-poll waits.
        for _ in range(5):
            with contextlib.suppress(ServiceError):
                await client.call(FetchKeyPackage(identity_key=bytes(32)))
        assert not parked.done()
        await client.call(Enqueue(recipient=identity.public_key, payload=b"done"))
        assert (await asyncio.wait_for(parked, 20)).messages[0].payload == b"done"
