"""What members check against the server: the group of each delivery, the
GroupInfo digest of each commit, and a member's replacement GroupInfo.

The server keeps the committer's GroupInfo to serve for rejoins and cannot
check its ``external_pub`` (only members derive it). It delivers each
commit with the digest of the GroupInfo it accepted, so members compare it
with their own view, and it takes a current member's own GroupInfo for the
epoch in its place (ReplaceGroupInfo) after checking what it can.
"""

from __future__ import annotations

import dataclasses

import pytest
from groups import (
    Member,
    application,
    build_group,
    claim,
    commit_call,
    connections,
    drain,
    members,
    process,
    publish_commit,
    receive,
    snapshot,
    upload_key_package,
    with_external_pub,
)
from server_helpers import authed

import qpq_core
from qpq_proto import Done, ReplaceGroupInfo
from qpq_proto.errors import (
    EpochConflictError,
    ForbiddenError,
    InvalidArgumentError,
    NotFoundError,
)
from qpq_server.testing import RunningServer


async def _forged_commit(server: RunningServer, mallory: Member, group_id: bytes) -> bytes:
    """``mallory`` commits a valid self-update whose GroupInfo names an external
    key of her choosing; the server accepts it. Returns the forged GroupInfo."""
    bundle = mallory.mls.self_update(group_id)
    forged = with_external_pub(bundle.group_info, b"\x07" * 32, mallory.identity)
    async with authed(server, mallory.identity) as client:
        await client.call(dataclasses.replace(commit_call(bundle), group_info=forged))
    mallory.mls.merge_pending_commit(group_id)
    return forged


async def test_deliveries_name_their_group_and_commits_their_group_info(
    server: RunningServer,
) -> None:
    alice, bob, carol = members(3)
    group_id = await build_group(server, alice, bob)
    async with connections(server, alice, bob, carol) as (alice_c, bob_c, carol_c):
        bundle = alice.mls.self_update(group_id)
        await publish_commit(alice_c, alice, bundle)
        await alice_c.call(application(alice, group_id, b"hello"))
        commit, message = await drain(bob_c)
        expected = qpq_core.group_info_facts(bundle.group_info).digest
        assert (commit.group_id, commit.group_info_digest) == (group_id, expected)
        assert (message.group_id, message.group_info_digest) == (group_id, b"")
        process(bob, [commit, message])
        assert bob.mls.group_info_facts(group_id).digest == expected
        # A Welcome names the group whose accepted commit added its recipient.
        await upload_key_package(carol_c, carol)
        package = await claim(alice_c, carol.key)
        await publish_commit(alice_c, alice, alice.mls.add_members(group_id, [package]))
        (welcome,) = await drain(carol_c)
        assert (welcome.group_id, welcome.group_info_digest) == (group_id, b"")
        (joined,) = process(carol, [welcome])
        assert isinstance(joined, qpq_core.Joined)


async def test_a_member_replaces_a_forged_group_info_and_rejoins_from_it(
    server: RunningServer,
) -> None:
    alice, bob, mallory = members(3)
    group_id = await build_group(server, alice, bob, mallory)
    forged = await _forged_commit(server, mallory, group_id)
    async with connections(server, alice, bob) as (alice_c, bob_c):
        (envelope,) = await drain(alice_c)
        process(alice, [envelope])
        own = alice.mls.group_info_facts(group_id)
        assert envelope.group_info_digest == qpq_core.group_info_facts(forged).digest
        assert envelope.group_info_digest != own.digest
        assert (await snapshot(alice_c, group_id)).group_info == forged

        mine = alice.mls.export_group_info(group_id)
        assert isinstance(await alice_c.call(ReplaceGroupInfo(group_id, mine)), Done)
        served = await snapshot(alice_c, group_id)
        assert served.group_info == mine
        assert qpq_core.group_info_facts(served.group_info).digest == own.digest
        # Another member's own GroupInfo says the same: answered, nothing written.
        process(bob, await drain(bob_c))
        await bob_c.call(ReplaceGroupInfo(group_id, bob.mls.export_group_info(group_id)))
        assert (await snapshot(bob_c, group_id)).group_info == mine
        assert "GroupInfo replaced by a member" in server.log()

        # A member who fell behind rejoins from what is served now, and the
        # others can process the external commit (with the forged one they could not).
        served = await snapshot(bob_c, group_id)
        bundle = bob.mls.rejoin(group_id, served.group_info, served.ratchet_tree)
        await publish_commit(bob_c, bob, bundle)
        (applied,) = await receive(alice_c, alice)
        assert isinstance(applied, qpq_core.CommitApplied)
        assert applied.external
        assert alice.exporter(group_id) == bob.exporter(group_id)


async def test_only_a_current_members_own_group_info_of_the_epoch_replaces_it(
    server: RunningServer,
) -> None:
    alice, bob, stranger = members(3)
    group_id = await build_group(server, alice, bob)
    mine = alice.mls.export_group_info(group_id)
    async with connections(server, alice, bob, stranger) as (alice_c, bob_c, stranger_c):
        with pytest.raises(ForbiddenError):  # a stranger learns nothing about the group
            await stranger_c.call(ReplaceGroupInfo(group_id, mine))
        with pytest.raises(NotFoundError):
            await alice_c.call(ReplaceGroupInfo(b"no such group", mine))
        with pytest.raises(ForbiddenError):  # signed by alice, offered by bob
            await bob_c.call(ReplaceGroupInfo(group_id, mine))
        with pytest.raises(InvalidArgumentError) as refused:
            await alice_c.call(ReplaceGroupInfo(group_id, b"\x00\x01\x00\x04garbage"))
        assert refused.value.field == "group_info"
        # Only members can tell a wrong external_pub: the server takes it
        # (docs/security.md, what a hostile member can still do).
        forged = with_external_pub(mine, b"\x09" * 32, alice.identity)
        await alice_c.call(ReplaceGroupInfo(group_id, forged))
        assert (await snapshot(alice_c, group_id)).group_info == forged
        await alice_c.call(ReplaceGroupInfo(group_id, mine))
        # The epoch moves on: last epoch's GroupInfo is refused as late.
        await publish_commit(bob_c, bob, bob.mls.self_update(group_id))
        with pytest.raises(EpochConflictError) as late:
            await alice_c.call(ReplaceGroupInfo(group_id, mine))
        assert late.value.epoch == 2
        process(alice, await drain(alice_c))
        # Removed, alice may replace nothing.
        await publish_commit(bob_c, bob, bob.mls.remove_members(group_id, [alice.key]))
        with pytest.raises(ForbiddenError):
            await alice_c.call(ReplaceGroupInfo(group_id, bob.mls.export_group_info(group_id)))
