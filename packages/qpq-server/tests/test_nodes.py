"""Two real qpq-server processes on one PostgreSQL database, with clients on each.

Both nodes serve the same certificate (as nodes behind one name do), so a
client pins one fingerprint and may reconnect to either.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from groups import (
    Member,
    application,
    build_group,
    commit_hash,
    drain,
    members,
    plaintexts,
    process,
    publish_commit,
    send,
)
from server_helpers import authed

import qpq_core
from qpq_proto import Ack, Envelope, Fetch, FetchKeyPackage, FetchWait, Health, UploadKeyPackages
from qpq_proto.errors import EpochConflictError, NotFoundError, RateLimitedError
from qpq_server._tls import generate_self_signed
from qpq_server.testing import PostgresCluster, RunningServer, start_server

NODE_ENV = {
    "QPQ_RATE_PER_SECOND": "100000",
    "QPQ_RATE_BURST": "100000",
    "QPQ_MAX_FETCH_WAIT_MS": "30000",
}


def _start_node(tmp_path: Path, name: str, env: dict[str, str]) -> RunningServer:
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    return start_server(home, extra_env=env, data_dir=home / "data")


@pytest.fixture
def node_env(tmp_path: Path, pg_url: str) -> dict[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed(cert, key)
    return {
        **NODE_ENV,
        "QPQ_DATABASE_URL": pg_url,
        "QPQ_TLS_CERT": str(cert),
        "QPQ_TLS_KEY": str(key),
    }


@contextlib.contextmanager
def _two_nodes(home: Path, env: dict[str, str]) -> Iterator[tuple[RunningServer, ...]]:
    first = _start_node(home, "a", env)
    try:
        second = _start_node(home, "b", env)
    except BaseException:
        first.stop()
        raise
    try:
        yield first, second
    finally:
        for node in (first, second):
            if node.process.poll() is None:
                assert node.stop() == 0, node.log()


@pytest.fixture
def nodes(tmp_path: Path, node_env: dict[str, str]) -> Iterator[tuple[RunningServer, ...]]:
    """Two nodes of this test's own."""
    with _two_nodes(tmp_path, node_env) as started:
        yield started


@pytest.fixture(scope="module")
def shared_nodes(
    tmp_path_factory: pytest.TempPathFactory, pg_cluster: PostgresCluster
) -> Iterator[tuple[RunningServer, ...]]:
    """Two nodes for the tests that neither stop nor reconfigure them (each
    uses identities and groups of its own)."""
    home = tmp_path_factory.mktemp("nodes")
    cert, key = home / "cert.pem", home / "key.pem"
    generate_self_signed(cert, key)
    env = {
        **NODE_ENV,
        "QPQ_DATABASE_URL": pg_cluster.schema_url(),
        "QPQ_TLS_CERT": str(cert),
        "QPQ_TLS_KEY": str(key),
    }
    with _two_nodes(home, env) as started:
        yield started


async def test_both_nodes_serve_one_store(shared_nodes: tuple[RunningServer, ...]) -> None:
    a, b = shared_nodes
    assert a.fingerprint == b.fingerprint
    assert "postgresql" in a.log()
    owner, joiner = members(2)
    # Built through node a (joiner's KeyPackage claimed there); used through b.
    group_id = await build_group(a, owner, joiner)
    async with authed(b, owner.identity) as owner_b, authed(a, joiner.identity) as joiner_a:
        await send(owner_b, owner, group_id, b"through b")
        received = process(joiner, await drain(joiner_a))
    assert plaintexts(received) == [b"through b"]


async def test_a_fetch_wait_on_one_node_wakes_for_a_publish_on_the_other(
    shared_nodes: tuple[RunningServer, ...],
) -> None:
    a, b = shared_nodes
    reader, writer = members(2)
    group_id = await build_group(a, writer, reader)
    async with authed(b, reader.identity) as reader_b, authed(a, writer.identity) as writer_a:
        for round_ in range(5):
            waiting = asyncio.create_task(reader_b.call(FetchWait(limit=10, timeout_ms=25_000)))
            await asyncio.sleep(0)  # the task sends its FetchWait stream now
            # A round trip behind it on the same connection: the long-poll has
            # read its empty queue and waits.
            await reader_b.call(Health())
            assert not waiting.done()
            await send(writer_a, writer, group_id, b"wake %d" % round_)
            result = await asyncio.wait_for(waiting, 20)
            assert plaintexts(process(reader, result.messages)) == [b"wake %d" % round_]
            await drain(reader_b)
        # A subscription on b is pushed what a stores too.
        async with reader_b.subscribe() as events:
            await send(writer_a, writer, group_id, b"pushed")
            event = await asyncio.wait_for(anext(events), 20)
            assert isinstance(event, Envelope)
            assert plaintexts(process(reader, [event])) == [b"pushed"]


async def test_concurrent_commits_on_both_nodes_one_is_accepted(
    nodes: tuple[RunningServer, ...],
) -> None:
    # Nodes of its own: on nodes that served other tests the loser's answer
    # is sometimes invalidArgument, not the conflict (a race in the server,
    # GroupStates.get loading a state newer than the epoch it was asked for).
    a, b = nodes
    first, second, third = members(3)
    group_id = await build_group(a, first, second, third)
    async with authed(a, first.identity) as on_a, authed(b, second.identity) as on_b:
        for _round in range(3):
            for member, client in ((first, on_a), (second, on_b)):
                for result in process(member, await drain(client)):
                    assert isinstance(result, qpq_core.CommitApplied)
            bundles = [first.mls.self_update(group_id), second.mls.self_update(group_id)]
            outcomes = await asyncio.gather(
                publish_commit(on_a, first, bundles[0]),
                publish_commit(on_b, second, bundles[1]),
                return_exceptions=True,
            )
            refused = [o for o in outcomes if isinstance(o, EpochConflictError)]
            assert len(refused) == 1, outcomes
            winner = bundles[0] if not isinstance(outcomes[0], BaseException) else bundles[1]
            assert refused[0].accepted_commit == commit_hash(winner)
            # The loser's commit reached nobody: the third member gets exactly one.
            async with authed(b, third.identity) as third_b:
                (applied,) = process(third, await drain(third_b))
            assert isinstance(applied, qpq_core.CommitApplied)
            assert third.exporter(group_id) == (first if winner is bundles[0] else second).exporter(
                group_id
            )


async def test_concurrent_key_package_claims_on_both_nodes_serve_each_once(
    shared_nodes: tuple[RunningServer, ...],
) -> None:
    a, b = shared_nodes
    owner = Member.generate()
    claimers = members(4)
    async with authed(a, owner.identity) as client:
        packages = owner.key_packages(12)
        await client.call(UploadKeyPackages(packages=packages))

    async def claim_all(node: RunningServer, claimer: Member) -> list[bytes]:
        served: list[bytes] = []
        async with authed(node, claimer.identity) as client:
            for _ in range(6):
                try:
                    answer = await client.call(FetchKeyPackage(identity_key=owner.key))
                except NotFoundError:
                    continue
                served.append(answer.package)
        return served

    results = await asyncio.gather(
        *(claim_all(node, claimer) for node, claimer in zip((a, b, a, b), claimers, strict=True))
    )
    served = [package for result in results for package in result]
    assert sorted(served) == sorted(packages)


async def test_kill_9_of_one_node_under_load_loses_nothing_acknowledged(
    tmp_path: Path, node_env: dict[str, str]
) -> None:
    a = _start_node(tmp_path, "a", node_env)
    b = _start_node(tmp_path, "b", node_env)
    try:
        publishers = members(2)
        recipient = Member.generate()
        groups = [await build_group(b, p, recipient) for p in publishers]
        acknowledged: list[bytes] = []
        received: set[bytes] = set()
        kill_after = 60
        published = asyncio.Event()

        async def publish_to(node: RunningServer, index: int, stop_at: int) -> None:
            publisher, group_id = publishers[index], groups[index]
            async with authed(node, publisher.identity) as client:
                while len(acknowledged) < stop_at:
                    call = application(publisher, group_id, b"m")
                    await client.call(call)
                    acknowledged.append(call.payload)

        async def read_from(node: RunningServer) -> None:
            async with authed(node, recipient.identity) as client:
                while True:
                    done = published.is_set()
                    wait_ms = 0 if done else 2000
                    call = FetchWait(limit=100, timeout_ms=wait_ms)
                    batch = (await client.call(call)).messages
                    if batch:
                        received.update(m.payload for m in batch)
                        await client.call(Ack(up_to_seq=batch[-1].seq))
                    elif done:
                        return

        # Under load on node a: both publishers and the recipient are its clients.
        on_a = [asyncio.create_task(publish_to(a, i, 10**9)) for i in range(2)]
        on_a.append(asyncio.create_task(read_from(a)))
        while len(acknowledged) < kill_after:
            assert not any(t.done() for t in on_a), [t for t in on_a if t.done()]
            await asyncio.sleep(0.005)
        a.kill()
        # Calls in flight to the dead node get no answer (they were not
        # acknowledged): the clients give up on it and reconnect to b.
        for task in on_a:
            task.cancel()
        await asyncio.gather(*on_a, return_exceptions=True)
        assert a.process.returncode == -9
        before = len(acknowledged)
        reader = asyncio.create_task(read_from(b))
        await asyncio.wait_for(
            asyncio.gather(*(publish_to(b, i, before + 40) for i in range(2))), 60
        )
        published.set()
        await asyncio.wait_for(reader, 60)
        assert len(acknowledged) >= before + 40
        missing = [p for p in acknowledged if p not in received]
        assert missing == []
    finally:
        for node in (a, b):
            if node.process.poll() is None:
                node.stop()


async def test_an_identitys_rate_limit_holds_across_nodes(
    tmp_path: Path, node_env: dict[str, str]
) -> None:
    # 40 calls at once, then one per second, per identity: shared by the nodes.
    env = {**node_env, "QPQ_RATE_PER_SECOND": "1", "QPQ_RATE_BURST": "40"}
    a = _start_node(tmp_path, "a", env)
    try:
        b = _start_node(tmp_path, "b", env)
        try:
            caller = qpq_core.Identity.generate()
            async with authed(a, caller) as on_a, authed(b, caller) as on_b:
                started = time.monotonic()
                answers = [
                    await asyncio.gather(
                        on_a.call(Fetch(limit=1)), on_b.call(Fetch(limit=1)), return_exceptions=True
                    )
                    for _ in range(60)
                ]
                elapsed = time.monotonic() - started
        finally:
            assert b.stop() == 0, b.log()
    finally:
        assert a.stop() == 0, a.log()
    results = [r for pair in answers for r in pair]
    refused = [r for r in results if isinstance(r, RateLimitedError)]
    admitted = [r for r in results if not isinstance(r, BaseException)]
    assert len(admitted) + len(refused) == len(results), results
    # Per node, each would have admitted its own 40 (120 calls, 60 on each;
    # the address limit, per node by nature, also admits 40 on each).
    # Shared: the one burst, what refilled meanwhile, and one lease (4) at most.
    assert len(admitted) <= 40 + elapsed * 1 + 4
    # Stricter by at most the lease the other node holds.
    assert len(admitted) >= 40 - 4
    assert "too many requests from this identity" in str(refused[0])
