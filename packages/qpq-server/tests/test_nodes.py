"""Two real qpq-server processes on one PostgreSQL database, with clients on each.

Both nodes serve the same certificate (as nodes behind one name do), so a
client pins one fingerprint and may reconnect to either.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from groups import (
    Member,
    application,
    build_group,
    commit_call,
    commit_hash,
    connections,
    drain,
    members,
    plaintexts,
    process,
    publish_commit,
    send,
    snapshot,
    with_external_pub,
)
from look_alikes import race
from server_helpers import authed

import qpq_core
from qpq_client import Client, ServerAddress, Trust
from qpq_proto import (
    Ack,
    Envelope,
    Fetch,
    FetchKeyPackage,
    FetchWait,
    Health,
    MessageKind,
    Publish,
    ReplaceGroupInfo,
    UploadKeyPackages,
)
from qpq_proto.errors import EpochConflictError, NotFoundError, RateLimitedError
from qpq_server._tls import generate_self_signed
from qpq_server.testing import PostgresCluster, RunningServer, start_server

NODE_ENV = {
    "QPQ_RATE_PER_SECOND": "100000",
    "QPQ_RATE_BURST": "100000",
    "QPQ_KEY_PACKAGE_CLAIM_BURST": "100000",
    "QPQ_KEY_PACKAGE_CLAIMS_PER_CLAIMER_PER_DAY": "100000",
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
    shared_nodes: tuple[RunningServer, ...],
) -> None:
    # On busy nodes another node's commit can land between a publish's reads
    # of the group: the loser must still get the conflict, not invalidArgument
    # (test_group_states.py pins that down deterministically).
    a, b = shared_nodes
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


async def test_a_group_info_replaced_through_one_node_is_served_by_the_other(
    shared_nodes: tuple[RunningServer, ...],
) -> None:
    a, b = shared_nodes
    alice, mallory = members(2)
    group_id = await build_group(a, alice, mallory)
    async with authed(a, mallory.identity) as mallory_a, authed(b, alice.identity) as alice_b:
        # Through a: a valid commit whose GroupInfo names mallory's external key.
        bundle = mallory.mls.self_update(group_id)
        forged = with_external_pub(bundle.group_info, b"\x05" * 32, mallory.identity)
        await mallory_a.call(dataclasses.replace(commit_call(bundle), group_info=forged))
        mallory.mls.merge_pending_commit(group_id)
        (commit,) = await drain(alice_b)
        assert commit.group_info_digest == qpq_core.group_info_facts(forged).digest
        process(alice, [commit])
        mine = alice.mls.export_group_info(group_id)
        # Through b: alice's own, checked against the state a stored.
        await alice_b.call(ReplaceGroupInfo(group_id, mine))
        assert (await snapshot(mallory_a, group_id)).group_info == mine
        # A commit through a moves the epoch: b refuses last epoch's GroupInfo.
        await publish_commit(mallory_a, mallory, mallory.mls.self_update(group_id))
        with pytest.raises(EpochConflictError) as late:
            await alice_b.call(ReplaceGroupInfo(group_id, mine))
        assert late.value.epoch == 3


async def test_members_on_both_nodes_heal_from_a_commit_they_cannot_process(
    shared_nodes: tuple[RunningServer, ...], tmp_path: Path
) -> None:
    # Library clients, half on each node; mallory's commit verifies on the
    # server but its membership tag (which only members check) is broken.
    a, b = shared_nodes
    suffix = secrets.token_hex(3)
    clients: list[Client] = []
    try:
        for name, node in (("alice", a), ("bob", b), ("carol", a), ("mallory", b)):
            clients.append(
                await Client.create(
                    tmp_path / "homes" / name,
                    "server-test-passphrase",
                    f"{name}-{suffix}",
                    server=ServerAddress(node.host, node.port),
                    trust=Trust(pin=node.fingerprint),
                    token=node.token,
                )
            )
        alice, bob, carol, mallory = clients
        honest = [alice, bob, carol]
        for member in clients[1:]:
            await member.add_contact(alice.username)
        await alice.create_group("team")
        await alice.invite("team", [m.username for m in clients[1:]])
        for member in clients[1:]:
            await member.receive(wait=10)
        (group,) = alice.groups()
        gid = group.group_id
        bundle = mallory._mls.self_update(gid)
        session = mallory._session
        assert session is not None
        broken = bundle.commit[:-1] + bytes([bundle.commit[-1] ^ 1])
        published = await session.conn.publish(
            gid, bundle.epoch, MessageKind.COMMIT, broken, group_info=bundle.group_info
        )
        mallory._mls.clear_pending_commit(gid)
        assert published.epoch == bundle.epoch + 1

        async def converged() -> bool:
            for member in honest:
                await member.receive()
            epochs = {m._mls.epoch(gid) for m in honest}
            return epochs == {bundle.epoch + 1 + len(honest)} and not any(
                g.needs_rejoin for m in honest for g in m._store.groups()
            )

        for _ in range(4):
            if await converged():
                break
        else:
            pytest.fail(f"no convergence: {[m._mls.epoch(gid) for m in honest]}")
        exporters = {m._mls.export_secret(gid, "qpq server test", b"", 32) for m in honest}
        assert len(exporters) == 1
        await alice.remove("team", [mallory.username])
        await bob.send("team", "from node b")
        await carol.send("team", "from node a")
        for member, expected in ((alice, 2), (bob, 1), (carol, 1)):
            texts: list[str] = []
            for _ in range(4):
                texts += [e.body for e in await member.receive(wait=5) if e.kind == "text"]
                if len(texts) >= expected:
                    break
            assert len(texts) == expected, (member.username, texts)
        assert mallory.identity_key not in alice._mls.members(gid)
    finally:
        for client in clients:
            await client.close()


def _proposal(member: Member, group_id: bytes) -> Publish:
    """``member``'s proposal to leave the group, as its client publishes it."""
    proposal = member.mls.leave(group_id).proposal
    return Publish(group_id, member.epoch(group_id), MessageKind.PROPOSAL, proposal)


async def test_a_proposal_through_one_node_is_committed_through_the_other(
    shared_nodes: tuple[RunningServer, ...],
) -> None:
    a, b = shared_nodes
    committer, leaver, other = members(3)
    # Built through b, which keeps the group's state of epoch 1 in memory.
    group_id = await build_group(b, committer, leaver, other)
    async with connections(a, leaver, other) as (leaver_a, other_a):
        await leaver_a.call(_proposal(leaver, group_id))
        async with authed(b, committer.identity) as committer_b:
            (stored,) = process(committer, await drain(committer_b))
            assert isinstance(stored, qpq_core.ProposalStored)
            # b verifies the commit against the state with the proposal a stored.
            bundle = committer.mls.commit_pending_proposals(group_id)
            assert (await publish_commit(committer_b, committer, bundle)).epoch == 2
            assert leaver.key not in committer.mls.members(group_id)
            seen, applied = process(other, await drain(other_a))
            assert isinstance(seen, qpq_core.ProposalStored)
            assert isinstance(applied, qpq_core.CommitApplied)
            assert other.exporter(group_id) == committer.exporter(group_id)
            # And the group goes on, through either node.
            await publish_commit(other_a, other, other.mls.self_update(group_id))
            (applied,) = process(committer, await drain(committer_b))
            assert isinstance(applied, qpq_core.CommitApplied)
            await send(committer_b, committer, group_id, b"still here")
            assert plaintexts(process(other, await drain(other_a))) == [b"still here"]


async def test_proposals_racing_through_both_nodes_are_both_stored(
    nodes: tuple[RunningServer, ...], pg_url: str
) -> None:
    a, b = nodes
    committer, first, second, stayer = members(4)
    group_id = await build_group(a, committer, first, second, stayer)
    async with (
        connections(a, first, committer) as (first_a, committer_a),
        connections(b, second, stayer) as (second_b, stayer_b),
        await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as blocker,
        await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as probe,
    ):
        async with blocker.transaction():
            # The group's row held here: each node verifies its proposal
            # against the state of epoch 1, then waits to store it.
            await blocker.execute("SELECT 1 FROM groups FOR UPDATE")
            publishes = asyncio.gather(
                first_a.call(_proposal(first, group_id)),
                second_b.call(_proposal(second, group_id)),
            )
            while True:
                cursor = await probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'UPDATE groups SET epoch%'"
                )
                row = await cursor.fetchone()
                if row is not None and row[0] == 2:
                    break
        # Released: one lands, the other finds the group changed and is
        # verified again against the state with the first.
        answers = await publishes
        assert [answer.epoch for answer in answers] == [1, 1]
        stored = process(committer, await drain(committer_a))
        assert [type(result) for result in stored] == [qpq_core.ProposalStored] * 2
        bundle = committer.mls.commit_pending_proposals(group_id)
        assert (await publish_commit(committer_a, committer, bundle)).epoch == 2
        assert sorted(committer.mls.members(group_id)) == sorted((committer.key, stayer.key))
        *proposals, applied = process(stayer, await drain(stayer_b))
        assert [type(result) for result in proposals] == [qpq_core.ProposalStored] * 2
        assert isinstance(applied, qpq_core.CommitApplied)
        assert stayer.exporter(group_id) == committer.exporter(group_id)


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


async def test_look_alikes_registered_at_once_on_both_nodes_are_stored_once(
    nodes: tuple[RunningServer, ...],
) -> None:
    # alice and aIice, abe and Greek ABE, mike and mIke: the database's key
    # rows decide, whichever node each registration goes through.
    a, b = nodes
    await race((a, b), rounds=8)


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


async def test_an_accounts_limits_hold_across_nodes(
    tmp_path: Path, node_env: dict[str, str]
) -> None:
    # 20 publishes an hour and 3 KeyPackage claims a day per account, whichever node.
    env = {
        **node_env,
        "QPQ_ACCOUNT_MESSAGES_PER_HOUR": "20",
        "QPQ_KEY_PACKAGE_CLAIMS_PER_ACCOUNT_PER_DAY": "3",
    }
    a = _start_node(tmp_path, "a", env)
    try:
        b = _start_node(tmp_path, "b", env)
        try:
            alice, bob = members(2)
            group_id = await build_group(a, alice, bob)  # alice's add: one of her 20
            crowd = members(6)
            for person in crowd:
                async with authed(b, person.identity) as own:
                    await own.call(UploadKeyPackages(packages=person.key_packages(1)))
            async with authed(a, alice.identity) as on_a, authed(b, alice.identity) as on_b:
                answers = []
                for n in range(30):
                    for via in (on_a, on_b):
                        try:
                            answers.append(await via.call(application(alice, group_id, b"%d" % n)))
                        except RateLimitedError as refused:
                            answers.append(refused)
                claims = []
                for person, via in zip(crowd, (on_a, on_b) * 3, strict=True):
                    try:
                        claims.append(await via.call(FetchKeyPackage(identity_key=person.key)))
                    except RateLimitedError as refused:
                        claims.append(refused)
        finally:
            assert b.stop() == 0, b.log()
    finally:
        assert a.stop() == 0, a.log()
    admitted = [r for r in answers if not isinstance(r, RateLimitedError)]
    refused = [r for r in answers if isinstance(r, RateLimitedError)]
    # Per node, each would have admitted its own 20 (40 of the 60). Shared:
    # the account's 19 left, and one lease (2 tokens) at most; stricter by
    # at most the lease the other node holds.
    assert 19 - 2 <= len(admitted) <= 19 + 2, len(admitted)
    assert refused[0].field == "account"
    assert "in an hour" in str(refused[0])
    # Claims are paid in the claim's own transaction: exactly the two left
    # (alice claimed bob's package to add him).
    assert [isinstance(c, RateLimitedError) for c in claims] == [False] * 2 + [True] * 4
