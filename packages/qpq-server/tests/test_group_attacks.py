"""Attacks on groups through a real server: each is refused with a coded error,
changes nothing, and the members carry on.

Everyone here holds the server's access token; what keeps a group safe is
that the server verifies every handshake message against the group's public
state (signed by a current member who is the publisher, for the current
epoch), fans out by the verified roster only, and accepts one commit per
epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter
from pathlib import Path

import pytest
from groups import (
    Member,
    application,
    build_group,
    claim,
    commit_call,
    commit_hash,
    connections,
    drain,
    fetch_all,
    members,
    plaintexts,
    private_commit,
    process,
    publish_commit,
    receive,
    snapshot,
    upload_key_package,
    with_broken_signature,
    with_epoch,
)
from server_helpers import authed

import qpq_core
from qpq_client import Client, ServerAddress, Trust
from qpq_proto import (
    CreateGroup,
    ErrorCode,
    FetchGroupInfo,
    MessageKind,
    Publish,
    Published,
    RegisterUser,
)
from qpq_proto.errors import (
    AlreadyExistsError,
    EpochConflictError,
    ForbiddenError,
    InvalidArgumentError,
    NotFoundError,
    ServiceError,
)
from qpq_server.testing import CallClient, RunningServer

#: The highest epoch the server can store (SQLite's signed 64-bit integers).
MAX_STORED_EPOCH = 2**63 - 1


async def _refusal(client: CallClient, call: Publish | CreateGroup) -> ErrorCode:
    with pytest.raises(ServiceError) as refused:
        await client.call(call)
    return refused.value.code


async def _commit_round(
    server: RunningServer, committer: Member, group_id: bytes, *others: Member
) -> None:
    """``committer`` commits a self-update; every other member processes it."""
    async with authed(server, committer.identity) as client:
        await publish_commit(client, committer, committer.mls.self_update(group_id))
    for other in others:
        async with authed(server, other.identity) as client:
            (applied,) = await receive(client, other)
            assert isinstance(applied, qpq_core.CommitApplied)
    assert len({m.exporter(group_id) for m in (committer, *others)}) == 1


def _impostor(group_id: bytes) -> tuple[Member, qpq_core.CommitBundle]:
    """A throwaway identity with its own group under the victim's id, and a commit
    it signed there: a real PublicMessage commit for that group id, at epoch 0."""
    mallory = Member.generate()
    mallory.mls.create_group(group_id)
    return mallory, mallory.mls.self_update(group_id)


async def test_forged_commits_at_any_epoch_are_refused_and_change_nothing(
    server: RunningServer,
) -> None:
    alice, bob, carol = people = members(3)
    group_id = await build_group(server, alice, bob, carol)
    await _commit_round(server, alice, group_id, bob, carol)  # epoch 2: epochs 0, 1 are stale
    async with authed(server, alice.identity) as client:
        before = await snapshot(client, group_id)
    current = before.epoch
    assert current == 2

    mallory, forged = _impostor(group_id)
    async with authed(server, mallory.identity) as client:
        for epoch in (0, 1, current, current + 1, MAX_STORED_EPOCH):
            call = Publish(
                group_id,
                epoch,
                MessageKind.COMMIT,
                with_epoch(forged.commit, epoch),
                group_info=forged.group_info,
            )
            # Refused as a stranger's before anything about the group is said.
            assert await _refusal(client, call) is ErrorCode.FORBIDDEN, epoch
        too_far = Publish(group_id, 2**64 - 1, MessageKind.COMMIT, forged.commit)
        assert await _refusal(client, too_far) is ErrorCode.INVALID_ARGUMENT
        for epoch in (current, current + 1):
            hand_made = Publish(
                group_id, epoch, MessageKind.COMMIT, private_commit(group_id, epoch)
            )
            assert await _refusal(client, hand_made) is ErrorCode.INVALID_ARGUMENT
    # A member cannot pass off another member's commit, nor one for another epoch.
    pending = carol.mls.self_update(group_id)
    async with authed(server, bob.identity) as client:
        assert await _refusal(client, commit_call(pending)) is ErrorCode.FORBIDDEN
        own = bob.mls.self_update(group_id)
        for epoch in (current + 1, MAX_STORED_EPOCH):
            relabelled = Publish(
                group_id,
                epoch,
                MessageKind.COMMIT,
                with_epoch(own.commit, epoch),
                group_info=own.group_info,
            )
            assert await _refusal(client, relabelled) is ErrorCode.INVALID_ARGUMENT
        # Its own commit, at the current epoch, with a bit of the signature flipped.
        tampered = Publish(
            group_id,
            current,
            MessageKind.COMMIT,
            with_broken_signature(own.commit),
            group_info=own.group_info,
        )
        assert await _refusal(client, tampered) is ErrorCode.FORBIDDEN
        hand_made = Publish(
            group_id, current, MessageKind.COMMIT, private_commit(group_id, current)
        )
        assert await _refusal(client, hand_made) is ErrorCode.INVALID_ARGUMENT
        bob.mls.clear_pending_commit(group_id)
    carol.mls.clear_pending_commit(group_id)

    # Nothing changed: the stored epoch and GroupInfo, and nobody received anything.
    async with authed(server, alice.identity) as client:
        after = await snapshot(client, group_id)
    assert (after.epoch, after.group_info) == (before.epoch, before.group_info)
    for member in people:
        async with authed(server, member.identity) as client:
            assert await fetch_all(client) == ()
    # And the members keep committing.
    await _commit_round(server, bob, group_id, alice, carol)
    await _commit_round(server, carol, group_id, alice, bob)


async def test_strangers_and_removed_members_reach_nobody(server: RunningServer) -> None:
    alice, bob, carol = members(3)
    group_id = await build_group(server, alice, bob, carol)
    # A stranger with a group of her own under the victim's id, at the same epoch (1).
    mallory, accomplice = members(2)
    mallory.mls.create_group(group_id)
    mallory.mls.add_members(group_id, accomplice.key_packages(1))
    mallory.mls.merge_pending_commit(group_id)
    strangers_commit = mallory.mls.self_update(group_id).commit
    mallory.mls.clear_pending_commit(group_id)
    attempts = [
        application(mallory, group_id, b"let me in"),
        Publish(group_id, 1, MessageKind.PROPOSAL, mallory.mls.leave(group_id).proposal),
        Publish(group_id, 1, MessageKind.COMMIT, strangers_commit),
    ]
    assert {call.epoch for call in attempts} == {1}
    # A removed member who has not processed the removal still holds epoch 1's keys.
    async with authed(server, alice.identity) as client:
        await publish_commit(client, alice, alice.mls.remove_members(group_id, [bob.key]))
    removed_commit = bob.mls.self_update(group_id).commit
    bob.mls.clear_pending_commit(group_id)
    attempts += [
        application(bob, group_id, b"still here?"),
        Publish(group_id, 1, MessageKind.PROPOSAL, bob.mls.leave(group_id).proposal),
        Publish(group_id, 1, MessageKind.COMMIT, removed_commit),
    ]
    for outsider, calls in ((mallory, attempts[:3]), (bob, attempts[3:])):
        async with authed(server, outsider.identity) as client:
            for call in calls:
                assert await _refusal(client, call) is ErrorCode.FORBIDDEN, call.kind
            with pytest.raises(ForbiddenError):
                await client.call(FetchGroupInfo(group_id=group_id))
    # Carol got the removal and nothing else; alice nothing; bob only his removal.
    async with authed(server, carol.identity) as client:
        (applied,) = await receive(client, carol)
    assert isinstance(applied, qpq_core.CommitApplied)
    assert applied.removed == (bob.key,)
    async with authed(server, alice.identity) as client:
        assert await fetch_all(client) == ()
    async with authed(server, bob.identity) as client:
        (removal,) = await receive(client, bob)
    assert isinstance(removal, qpq_core.CommitApplied)
    assert removal.self_removed
    assert alice.exporter(group_id) == carol.exporter(group_id)


async def test_publishing_to_an_unknown_group_is_not_found(server: RunningServer) -> None:
    mallory = Member.generate()
    group_id = mallory.mls.create_group().group_id  # never registered
    commit = mallory.mls.self_update(group_id)
    async with authed(server, mallory.identity) as client:
        for call in (application(mallory, group_id, b"anyone?"), commit_call(commit)):
            with pytest.raises(NotFoundError):
                await client.call(call)
        with pytest.raises(NotFoundError):
            await client.call(FetchGroupInfo(group_id=group_id))


async def test_create_group_takes_an_id_once_and_only_from_its_sole_member(
    server: RunningServer,
) -> None:
    alice, mallory, bob = members(3)
    group_id = await build_group(server, alice)
    # Someone else's GroupInfo for an id that is taken, and for one that is not.
    squatter = mallory.mls.create_group(group_id)
    unregistered = alice.mls.create_group()
    async with authed(server, mallory.identity) as client:
        with pytest.raises(AlreadyExistsError):
            await client.call(CreateGroup(group_info=squatter.group_info))
        with pytest.raises(ForbiddenError):
            await client.call(CreateGroup(group_info=unregistered.group_info))
        with pytest.raises(InvalidArgumentError):
            await client.call(CreateGroup(group_info=b"not a GroupInfo"))
    # The owner's own GroupInfo, but with other members, or at a later epoch.
    crowded = alice.mls.create_group().group_id
    alice.mls.add_members(crowded, bob.key_packages(1))
    alice.mls.merge_pending_commit(crowded)
    moved_on = alice.mls.create_group().group_id
    alice.mls.self_update(moved_on)
    alice.mls.merge_pending_commit(moved_on)
    async with authed(server, alice.identity) as client:
        with pytest.raises(ForbiddenError):
            await client.call(CreateGroup(group_info=alice.mls.export_group_info(crowded)))
        with pytest.raises(InvalidArgumentError):
            await client.call(CreateGroup(group_info=alice.mls.export_group_info(moved_on)))
        # None of the refusals took an id: the real owner still registers hers.
        await client.call(CreateGroup(group_info=unregistered.group_info))
        with pytest.raises(NotFoundError):
            await client.call(FetchGroupInfo(group_id=crowded))
        assert (await snapshot(client, unregistered.group_id)).epoch == 0


async def test_a_welcome_reaches_only_the_members_its_commit_adds(server: RunningServer) -> None:
    alice, bob, dave, eve = members(4)
    group_id = await build_group(server, alice, bob)
    for member in (dave, eve):
        async with authed(server, member.identity) as client:
            await upload_key_package(client, member)
    async with authed(server, alice.identity) as client:
        # A commit that adds nobody cannot carry a Welcome (to anyone).
        stray = alice.mls.self_update(group_id)
        call = Publish(
            group_id,
            1,
            MessageKind.COMMIT,
            stray.commit,
            welcome=b"for eve",
            group_info=stray.group_info,
        )
        assert await _refusal(client, call) is ErrorCode.INVALID_ARGUMENT
        alice.mls.clear_pending_commit(group_id)
        adding = alice.mls.add_members(group_id, [await claim(client, dave.key)])
        assert adding.welcome is not None
        # A commit that adds must bring its Welcome.
        without = Publish(
            group_id, 1, MessageKind.COMMIT, adding.commit, group_info=adding.group_info
        )
        assert await _refusal(client, without) is ErrorCode.INVALID_ARGUMENT
        assert (await snapshot(client, group_id)).epoch == 1
        published = await publish_commit(client, alice, adding)
        assert (published.recipients, published.epoch) == (2, 2)  # bob's commit, dave's Welcome
        assert await fetch_all(client) == ()
    queued = {}
    for member in (bob, dave, eve):
        async with authed(server, member.identity) as client:
            queued[member.key] = [m.payload for m in await fetch_all(client)]
    assert queued == {bob.key: [adding.commit], dave.key: [adding.welcome], eve.key: []}


async def test_concurrent_commits_never_fork(server: RunningServer) -> None:
    people = members(5)
    group_id = await build_group(server, *people)
    async with connections(server, *people) as clients:
        for _round in range(3):
            epoch = people[0].epoch(group_id)
            bundles = [m.mls.self_update(group_id) for m in people]
            outcomes = await asyncio.gather(
                *(c.call(commit_call(b)) for c, b in zip(clients, bundles, strict=True)),
                return_exceptions=True,
            )
            (winner,) = [i for i, o in enumerate(outcomes) if isinstance(o, Published)]
            assert outcomes[winner].epoch == epoch + 1
            for index, outcome in enumerate(outcomes):
                if index == winner:
                    people[index].mls.merge_pending_commit(group_id)
                    continue
                assert isinstance(outcome, EpochConflictError)
                assert outcome.accepted_commit == commit_hash(bundles[winner])
                assert outcome.epoch == epoch + 1
                people[index].mls.clear_pending_commit(group_id)
            for index, (member, client) in enumerate(zip(people, clients, strict=True)):
                queued = await drain(client)
                expected = [] if index == winner else [bundles[winner].commit]
                assert [m.payload for m in queued] == expected
                process(member, queued)
            assert {m.epoch(group_id) for m in people} == {epoch + 1}
            assert len({m.exporter(group_id) for m in people}) == 1
        # The same commit sent twice (at once) is accepted once and delivered once.
        bundle = people[0].mls.self_update(group_id)
        answers = await asyncio.gather(*(clients[0].call(commit_call(bundle)) for _ in range(2)))
        assert sorted(a.recipients for a in answers) == [0, len(people) - 1]
        assert {a.epoch for a in answers} == {people[0].epoch(group_id) + 1}
        people[0].mls.merge_pending_commit(group_id)
        for member, client in zip(people[1:], clients[1:], strict=True):
            queued = await drain(client)
            assert [m.payload for m in queued] == [bundle.commit]
            process(member, queued)
        assert len({m.exporter(group_id) for m in people}) == 1


# ---- a split through the real client library ----------------------------------


@contextlib.asynccontextmanager
async def _library_clients(server: RunningServer, home: Path, *names: str):  # type: ignore[no-untyped-def]
    suffix = secrets.token_hex(3)
    clients: list[Client] = []
    try:
        for name in names:
            clients.append(
                await Client.create(
                    home / name,
                    "server-test-passphrase",
                    f"{name}-{suffix}",
                    server=ServerAddress(server.host, server.port),
                    trust=Trust(pin=server.fingerprint),
                    token=server.token,
                )
            )
        for invitee in clients[1:]:
            # The first one invites the others: they join, not hold a request.
            await invitee.add_contact(clients[0].username)
        yield clients
    finally:
        for client in clients:
            await client.close()


def _library_exporter(client: Client, group_id: bytes) -> bytes:
    return client._mls.export_secret(group_id, "qpq server test", b"", 32)


async def test_fake_messages_with_higher_epochs_cannot_split_a_group(
    server: RunningServer, tmp_path: Path
) -> None:
    dave = Member.generate()  # a member whose MLS state the test holds, to forge with
    async with _library_clients(server, tmp_path, "alice", "bob", "carol") as clients:
        alice, bob, carol = clients
        dave_name = f"dave-{secrets.token_hex(3)}"
        async with authed(server, dave.identity) as client:
            await client.call(RegisterUser(dave_name))
            await upload_key_package(client, dave)
        await alice.create_group("team")
        await alice.invite("team", [bob.username, carol.username, dave_name])
        for member in (bob, carol):
            await member.receive(wait=10)
        (group,) = alice.groups()
        group_id, start = group.group_id, group.epoch
        mallory, forged = _impostor(group_id)
        refused: list[ErrorCode] = []
        accepted: list[object] = []

        async def inject(client: CallClient, calls: list[Publish]) -> None:
            for call in calls:
                try:
                    accepted.append(await client.call(call))
                except ServiceError as error:
                    refused.append(error.code)

        def fakes(epoch: int) -> tuple[list[Publish], list[Publish]]:
            """A stranger's forged commit and an insider's real message, relabelled."""
            stranger = [
                Publish(
                    group_id,
                    e,
                    MessageKind.COMMIT,
                    with_epoch(forged.commit, e),
                    group_info=forged.group_info,
                )
                for e in (epoch, epoch + 1, epoch + 2, MAX_STORED_EPOCH)
            ]
            real = dave.mls.encrypt(group_id, b"fake").message
            insider = [
                Publish(group_id, e, MessageKind.APPLICATION, with_epoch(real, e))
                for e in (epoch + 1, epoch + 5)
            ]
            return stranger, insider

        async with connections(server, mallory, dave) as (stranger, insider):
            # The Welcome, then the group's name the inviter announces to joiners.
            joined, *_named = await receive(insider, dave)
            assert isinstance(joined, qpq_core.Joined)
            for _round in range(2):
                from_stranger, from_insider = fakes(dave.epoch(group_id))
                await asyncio.gather(
                    alice.update("team"),
                    bob.update("team"),
                    inject(stranger, from_stranger),
                    inject(insider, from_insider),
                )
                # Dave keeps up with the real commits, as any member does.
                for result in await receive(insider, dave):
                    assert isinstance(result, qpq_core.CommitApplied)
            assert accepted == []
            # The stranger is no member; the insider's epochs are not the group's.
            assert Counter(refused) == {ErrorCode.FORBIDDEN: 8, ErrorCode.EPOCH_CONFLICT: 4}
            for _ in range(2):
                for member in clients:
                    await member.receive(wait=1)
            # Two rounds of two updates each: none lost, none forked.
            assert {c.groups()[0].epoch for c in clients} == {start + 4}
            assert dave.epoch(group_id) == start + 4
            exporters = {_library_exporter(c, group_id) for c in clients}
            assert exporters == {dave.mls.export_secret(group_id, "qpq server test", b"", 32)}
            await alice.send("team", "still one group")
            for member in (bob, carol):
                assert [e.body for e in await member.receive(wait=10)] == ["still one group"]
            assert len(plaintexts(await receive(insider, dave))) == 1
