"""What the server acknowledged survives restarts and SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import platform
import time
from pathlib import Path
from typing import Any

import pytest
from groups import (
    Member,
    application,
    build_group,
    claim,
    commit_call,
    connections,
    create_group,
    drain,
    fetch_all,
    members,
    plaintexts,
    process,
    publish_commit,
    receive,
    send,
    snapshot,
)
from server_helpers import answer_of, authed, proven
from storage_checks import NO_PROBLEMS, file_payload_problems

from qpq_proto import (
    Ack,
    CreateGroup,
    Done,
    Envelope,
    ErrorCode,
    ErrorResponse,
    FetchWait,
    Published,
    Request,
    UploadKeyPackages,
)
from qpq_proto.errors import QpqError, UnavailableError
from qpq_server import _ops_groups
from qpq_server._config import ServerConfig
from qpq_server._context import App, Clock
from qpq_server._dispatch import Dispatcher
from qpq_server._metrics import Metrics
from qpq_server._notifier import DeliveryNotifier
from qpq_server._sqlcipher import SqlCipherStorage, _Database
from qpq_server.testing import TEST_DB_KEY, start_server

pytestmark = pytest.mark.slow

NO_RATE_LIMIT = {"QPQ_RATE_PER_SECOND": "100000", "QPQ_RATE_BURST": "100000"}


async def test_restart_keeps_queued_messages_packages_and_groups(tmp_path: Path) -> None:
    alice, bob = members(2)
    packages = bob.key_packages(3)
    server = start_server(tmp_path)
    try:
        async with authed(server, bob.identity) as client:
            await client.call(UploadKeyPackages(packages=packages))
        async with authed(server, alice.identity) as client:
            group_id = await create_group(client, alice)
            claimed = await claim(client, bob.key)
            await publish_commit(client, alice, alice.mls.add_members(group_id, [claimed]))
            sent = [await send(client, alice, group_id, b"msg-%d" % i) for i in range(25)]
    finally:
        assert server.stop() == 0
    restarted = start_server(tmp_path, data_dir=server.data_dir)
    try:
        assert restarted.fingerprint == server.fingerprint  # the dev cert is reused
        async with authed(restarted, bob.identity) as client:
            queued = await fetch_all(client)
            assert [m.payload for m in queued[1:]] == sent
            received = await receive(client, bob)  # the Welcome, then the messages
            assert plaintexts(received) == [b"msg-%d" % i for i in range(25)]
        async with authed(restarted, alice.identity) as client:
            rest = [await claim(client, bob.key) for _ in range(2)]
            # The group's verified state survived too: the next commit is checked against it.
            assert (await snapshot(client, group_id)).epoch == 1
            published = await publish_commit(client, alice, alice.mls.self_update(group_id))
            assert (published.recipients, published.epoch) == (1, 2)
        assert sorted([claimed, *rest]) == sorted(packages)
        async with authed(restarted, bob.identity) as client:
            await receive(client, bob)
        assert alice.exporter(group_id) == bob.exporter(group_id)
    finally:
        restarted.stop()


async def test_kill_9_under_load_loses_no_acknowledged_publish(tmp_path: Path) -> None:
    recipient, *senders = members(5)
    server = start_server(tmp_path, extra_env=NO_RATE_LIMIT)
    group_id = await build_group(server, recipient, *senders)
    acknowledged: list[bytes] = []
    kill_after = 150

    async def sender_loop(sender: Member) -> None:
        with contextlib.suppress(QpqError, ConnectionError, OSError):
            async with authed(server, sender.identity) as client:
                for n in range(10_000):  # bounded; the kill ends it far earlier
                    call = application(sender, group_id, b"%d" % n)
                    await client.call(call)
                    acknowledged.append(call.payload)

    async def killer() -> None:
        while len(acknowledged) < kill_after:
            assert not all(t.done() for t in tasks), "every sender stopped before the kill"
            await asyncio.sleep(0.005)
        server.kill()

    tasks = [asyncio.create_task(sender_loop(s)) for s in senders]
    await asyncio.wait_for(killer(), 60)
    # Senders see the connection die (idle timeout is long: cancel them).
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert server.process.returncode == -9
    assert len(acknowledged) >= kill_after

    restarted = start_server(tmp_path, data_dir=server.data_dir, extra_env=NO_RATE_LIMIT)
    try:
        async with authed(restarted, recipient.identity) as client:
            stored = {m.payload for m in await fetch_all(client)}
    finally:
        restarted.stop()
    missing = [p for p in acknowledged if p not in stored]
    assert missing == []


async def test_kill_9_amid_publishes_and_acks_leaks_no_payload(tmp_path: Path) -> None:
    recipients = members(3)
    keys = tuple(r.key for r in recipients)
    publishers = members(3)
    server = start_server(tmp_path, extra_env=NO_RATE_LIMIT)
    # Each publisher has its own group with the three recipients.
    groups = [await build_group(server, p, *recipients) for p in publishers]
    acknowledged: list[bytes] = []
    # Per recipient: payloads it may have removed (fetched, then acked or acking).
    maybe_acked: dict[bytes, set[bytes]] = {key: set() for key in keys}
    kill_after = 120

    async def publish_loop(index: int) -> None:
        publisher, group_id = publishers[index], groups[index]
        with contextlib.suppress(QpqError, ConnectionError, OSError):
            async with authed(server, publisher.identity) as client:
                for _ in range(10_000):  # bounded; the kill ends it far earlier
                    call = application(publisher, group_id, b"m")
                    await client.call(call)
                    acknowledged.append(call.payload)

    async def ack_loop(recipient: Member) -> None:
        with contextlib.suppress(QpqError, ConnectionError, OSError):
            async with authed(server, recipient.identity) as client:
                for _ in range(10_000):
                    batch = (await client.call(FetchWait(limit=20, timeout_ms=5000))).messages
                    if batch:
                        maybe_acked[recipient.key].update(m.payload for m in batch)
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
        stored: dict[bytes, set[bytes]] = {}
        for r in recipients:
            async with authed(restarted, r.identity) as client:
                stored[r.key] = {m.payload for m in await fetch_all(client)}
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
    subscriber, peer = members(2)
    server = start_server(tmp_path)
    try:
        group_id = await build_group(server, peer, subscriber)
        async with (
            connections(server, subscriber, peer) as (client, peer_client),
            client.subscribe() as events,
        ):
            payload = await send(peer_client, peer, group_id, b"one")
            first = await asyncio.wait_for(anext(events), 10)
            assert isinstance(first, Envelope)
            assert first.payload == payload
            server.process.terminate()
            with pytest.raises(UnavailableError) as last:
                await asyncio.wait_for(anext(events), 10)
            assert last.value.code is ErrorCode.UNAVAILABLE
        assert server.process.wait(20) == 0
    finally:
        if server.process.poll() is None:
            server.kill()


#: Timed sleeps (nanosleep, clock_nanosleep) by architecture, as /proc/PID/task/TID/syscall
#: names them. In the server only SQLite's busy handler sleeps so: a write waits for a
#: lock someone else holds.
_TIMED_SLEEPS = {"x86_64": {"35", "230"}, "aarch64": {"101", "115"}}


def _threads_in_timed_sleep(pid: int) -> int:
    sleeps = _TIMED_SLEEPS[platform.machine()]
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            if (task / "syscall").read_text().split()[0] in sleeps:
                count += 1
    return count


async def _a_write_waits_for_the_lock(pid: int) -> None:
    deadline = time.monotonic() + 4  # within SQLite's busy_timeout of 5 s
    while _threads_in_timed_sleep(pid) == 0:
        assert time.monotonic() < deadline, "the server never waited for the database lock"
        await asyncio.sleep(0.001)


async def test_kill_9_between_accepting_a_commit_and_its_fan_out_loses_nothing(
    tmp_path: Path,
) -> None:
    alice, bob, carol = members(3)
    server = start_server(tmp_path)
    group_id = await build_group(server, alice, bob, carol)
    bundle = alice.mls.self_update(group_id)
    assert _threads_in_timed_sleep(server.process.pid) == 0
    # Hold the database's write lock: the server verifies the commit (its
    # in-memory state takes it), then its write waits, and is killed there.
    holder = _Database(server.data_dir / "qpq.db", TEST_DB_KEY)
    try:
        holder.conn.execute("BEGIN IMMEDIATE")
        async with authed(server, alice.identity) as client:
            publishing = asyncio.create_task(client.call(commit_call(bundle)))
            await _a_write_waits_for_the_lock(server.process.pid)
            assert not publishing.done()
            server.kill()
            publishing.cancel()
            await asyncio.gather(publishing, return_exceptions=True)
        holder.conn.execute("ROLLBACK")
    finally:
        holder.close()
    assert server.process.returncode == -9

    restarted = start_server(tmp_path, data_dir=server.data_dir)
    try:
        # Neither the state advance nor the fan-out happened.
        async with authed(restarted, alice.identity) as client:
            assert (await snapshot(client, group_id)).epoch == 1
        for member in (bob, carol):
            async with authed(restarted, member.identity) as client:
                assert await fetch_all(client) == ()
        # The committer's retry lands, once; an answered commit survives a kill -9 whole.
        async with authed(restarted, alice.identity) as client:
            published = await publish_commit(client, alice, bundle)
        assert (published.recipients, published.epoch) == (2, 2)
        restarted.kill()
    finally:
        if restarted.process.poll() is None:
            restarted.stop()
    again = start_server(tmp_path, data_dir=server.data_dir)
    try:
        async with authed(again, alice.identity) as client:
            assert (await snapshot(client, group_id)).epoch == 2
        for member in (bob, carol):
            async with authed(again, member.identity) as client:
                queued = await drain(client)
            assert [m.payload for m in queued] == [bundle.commit]
            process(member, queued)
        assert len({m.exporter(group_id) for m in (alice, bob, carol)}) == 1
    finally:
        again.stop()


async def test_a_commit_whose_fan_out_fails_is_not_stored_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In process, with the real handlers, MLS checks and store: the fan-out
    # fails after the state advance was written in the same transaction.
    storage = await SqlCipherStorage.open(tmp_path / "qpq.db", "key")
    app = App(
        config=ServerConfig(auth_token="tok", data_dir=tmp_path),
        storage=storage,
        notifier=DeliveryNotifier(),
        clock=Clock(),
        version="test",
        started_at=0.0,
    )
    dispatcher = Dispatcher(app, Metrics())
    alice, bob = members(2)

    async def call(member: Member, call: Any) -> Any:
        connection = proven(member.key)
        return await answer_of(dispatcher, Request(call=call, token="tok"), connection)

    try:
        created = alice.mls.create_group()
        group_id = created.group_id
        assert await call(alice, CreateGroup(group_info=created.group_info)) == Done()
        adding = alice.mls.add_members(group_id, bob.key_packages(1))
        assert isinstance(await call(alice, commit_call(adding)), Published)
        alice.mls.merge_pending_commit(group_id)
        bundle = alice.mls.self_update(group_id)

        def disk_full(*_args: Any, **_kwargs: Any) -> Any:
            raise OSError("disk full")

        monkeypatch.setattr(_ops_groups, "fan_out", disk_full)
        failed = await call(alice, commit_call(bundle))
        assert isinstance(failed, ErrorResponse)
        assert failed.code is ErrorCode.INTERNAL
        monkeypatch.undo()
        assert await storage.group_version(group_id) == (1, 0)
        assert await storage.accepted_commit(group_id, 1) is None
        assert (await storage.group_info(group_id)) == (1, adding.group_info)
        queued = await storage.fetch(bob.key, after_seq=0, limit=10, max_bytes=1 << 24, now_ms=0)
        assert [m.payload for m in queued] == [adding.welcome]
        # Nothing of it was kept in memory either: the same commit is verified again.
        published = await call(alice, commit_call(bundle))
        assert (published.recipients, published.epoch) == (1, 2)
    finally:
        await storage.close()
