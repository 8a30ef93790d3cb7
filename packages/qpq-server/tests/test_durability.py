"""What the server acknowledged survives restarts and SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from server_helpers import authed, key_packages
from storage_checks import NO_PROBLEMS, file_payload_problems

import qpq_core
from qpq_proto import (
    Ack,
    Enqueue,
    Envelope,
    ErrorCode,
    ErrorResponse,
    Fetch,
    FetchKeyPackage,
    FetchWait,
    MessageKind,
    Publish,
    UploadKeyPackages,
)
from qpq_proto.errors import QpqError
from qpq_server.testing import TEST_DB_KEY, start_server

pytestmark = pytest.mark.slow

NO_RATE_LIMIT = {"QPQ_RATE_PER_SECOND": "100000", "QPQ_RATE_BURST": "100000"}


async def _fetch_all(server, identity: qpq_core.Identity) -> list[bytes]:  # type: ignore[no-untyped-def]
    payloads: list[bytes] = []
    async with authed(server, identity) as client:
        messages = (await client.call(Fetch(limit=1000))).messages
        payloads.extend(m.payload for m in messages)
    return payloads


async def test_restart_keeps_queued_messages_and_packages(tmp_path: Path) -> None:
    alice, bob = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    packages = key_packages(bob, 3)
    server = start_server(tmp_path)
    try:
        async with authed(server, alice) as client:
            for i in range(25):
                await client.call(Enqueue(recipient=bob.public_key, payload=b"msg-%d" % i))
        async with authed(server, bob) as client:
            await client.call(UploadKeyPackages(packages=packages))
        async with authed(server, alice) as client:
            claimed = (await client.call(FetchKeyPackage(identity_key=bob.public_key))).package
    finally:
        assert server.stop() == 0
    restarted = start_server(tmp_path, data_dir=server.data_dir)
    try:
        assert restarted.fingerprint == server.fingerprint  # the dev cert is reused
        assert await _fetch_all(restarted, bob) == [b"msg-%d" % i for i in range(25)]
        async with authed(restarted, alice) as client:
            rest = [
                (await client.call(FetchKeyPackage(identity_key=bob.public_key))).package
                for _ in range(2)
            ]
        assert sorted([claimed, *rest]) == sorted(packages)
    finally:
        restarted.stop()


async def test_kill_9_under_load_loses_no_acknowledged_enqueue(tmp_path: Path) -> None:
    recipient = qpq_core.Identity.generate()
    senders = [qpq_core.Identity.generate() for _ in range(4)]
    server = start_server(tmp_path, extra_env=NO_RATE_LIMIT)
    acknowledged: list[bytes] = []
    kill_after = 150

    async def sender_loop(identity: qpq_core.Identity, index: int) -> None:
        with contextlib.suppress(QpqError, ConnectionError, OSError):
            async with authed(server, identity) as client:
                for n in range(10_000):  # bounded; the kill ends it far earlier
                    payload = b"s%d-%d" % (index, n)
                    await client.call(Enqueue(recipient=recipient.public_key, payload=payload))
                    acknowledged.append(payload)

    async def killer() -> None:
        while len(acknowledged) < kill_after:
            assert not all(t.done() for t in tasks), "every sender stopped before the kill"
            await asyncio.sleep(0.005)
        server.kill()

    tasks = [asyncio.create_task(sender_loop(s, i)) for i, s in enumerate(senders)]
    await asyncio.wait_for(killer(), 60)
    # Senders see the connection die (idle timeout is long: cancel them).
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert server.process.returncode == -9
    assert len(acknowledged) >= kill_after

    restarted = start_server(tmp_path, data_dir=server.data_dir, extra_env=NO_RATE_LIMIT)
    try:
        stored = set(await _fetch_all(restarted, recipient))
    finally:
        restarted.stop()
    missing = [p for p in acknowledged if p not in stored]
    assert missing == []


async def test_kill_9_amid_publishes_and_acks_leaks_no_payload(tmp_path: Path) -> None:
    recipients = [qpq_core.Identity.generate() for _ in range(3)]
    keys = tuple(r.public_key for r in recipients)
    publishers = [qpq_core.MlsClient(qpq_core.Identity.generate()) for _ in range(3)]
    groups = [p.create_group().group_id for p in publishers]
    server = start_server(tmp_path, extra_env=NO_RATE_LIMIT)
    acknowledged: list[bytes] = []
    # Per recipient: payloads it may have removed (fetched, then acked or acking).
    maybe_acked: dict[bytes, set[bytes]] = {key: set() for key in keys}
    kill_after = 120

    async def publish_loop(index: int) -> None:
        mls, group_id = publishers[index], groups[index]
        with contextlib.suppress(QpqError, ConnectionError, OSError):
            async with authed(server, mls.identity) as client:
                for _ in range(10_000):  # bounded; the kill ends it far earlier
                    payload = mls.encrypt(group_id, b"m").message
                    call = Publish(
                        group_id=group_id,
                        epoch=0,
                        kind=MessageKind.APPLICATION,
                        payload=payload,
                        recipients=keys,
                    )
                    await client.call(call)
                    acknowledged.append(payload)

    async def ack_loop(identity: qpq_core.Identity) -> None:
        with contextlib.suppress(QpqError, ConnectionError, OSError):
            async with authed(server, identity) as client:
                for _ in range(10_000):
                    batch = (await client.call(FetchWait(limit=20, timeout_ms=5000))).messages
                    if batch:
                        maybe_acked[identity.public_key].update(m.payload for m in batch)
                        await client.call(Ack(up_to_seq=batch[-1].seq))

    async def killer() -> None:
        while len(acknowledged) < kill_after:
            assert not all(t.done() for t in tasks), "every task stopped before the kill"
            await asyncio.sleep(0.005)
        server.kill()

    tasks = [asyncio.create_task(publish_loop(i)) for i in range(len(publishers))]
    tasks += [asyncio.create_task(ack_loop(r)) for r in recipients]
    await asyncio.wait_for(killer(), 60)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert server.process.returncode == -9
    assert all(maybe_acked.values()), "the recipients acked nothing before the kill"

    restarted = start_server(tmp_path, data_dir=server.data_dir, extra_env=NO_RATE_LIMIT)
    try:
        stored = {r.public_key: set(await _fetch_all(restarted, r)) for r in recipients}
    finally:
        assert restarted.stop() == 0
    missing = [
        (key.hex()[:8], payload[-8:].hex())
        for payload in acknowledged
        for key in keys
        if payload not in stored[key] and payload not in maybe_acked[key]
    ]
    assert missing == []
    problems = file_payload_problems(server.data_dir / "qpq.db", TEST_DB_KEY)
    assert problems == NO_PROBLEMS


async def test_unavailable_is_pushed_to_subscribers_on_shutdown(tmp_path: Path) -> None:
    identity = qpq_core.Identity.generate()
    server = start_server(tmp_path)
    try:
        async with authed(server, identity) as client, client.subscribe() as events:
            await client.call(Enqueue(recipient=identity.public_key, payload=b"one"))
            first = await asyncio.wait_for(anext(events), 10)
            assert isinstance(first, Envelope)
            server.process.terminate()
            last = await asyncio.wait_for(anext(events), 10)
            assert isinstance(last, ErrorResponse)
            assert last.code is ErrorCode.UNAVAILABLE
        assert server.process.wait(20) == 0
    finally:
        if server.process.poll() is None:
            server.kill()
