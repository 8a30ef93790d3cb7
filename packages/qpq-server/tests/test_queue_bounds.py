"""No member, sender or fan-out can make a group or a queue stop working.

A full queue gets one gap notice per group instead of blocking the publish,
and its owner rejoins by external commit; one sender's share of a queue is
capped, so a stranger who invites someone cannot fill their queue; a wide
fan-out pays its width in rate-limit tokens; a group has at most
``max_recipients`` members. Each test runs its own server process with the
limits it needs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from groups import (
    Member,
    application,
    build_group,
    claim,
    connections,
    create_group,
    drain,
    fetch_all,
    members,
    plaintexts,
    process,
    publish_commit,
    receive,
    rejoin,
    send,
    snapshot,
    upload_key_package,
)
from server_helpers import authed

import qpq_core
from qpq_proto import NO_SENDER, Envelope, Fetch
from qpq_proto.errors import InvalidArgumentError, RateLimitedError
from qpq_server._handlers.groups import RECIPIENTS_PER_TOKEN
from qpq_server.testing import ServerProcess

NO_RATE_LIMIT = {"QPQ_RATE_PER_SECOND": "100000", "QPQ_RATE_BURST": "100000"}


def _gaps(envelopes: tuple[Envelope, ...]) -> list[bytes]:
    return [e.gap_group_id for e in envelopes if e.is_gap]


async def test_a_full_queue_does_not_stop_the_group_and_its_owner_rejoins(
    tmp_path: Path,
) -> None:
    env = {**NO_RATE_LIMIT, "QPQ_QUEUE_DEPTH": "6", "QPQ_QUEUE_DEPTH_PER_SENDER": "6"}
    with ServerProcess(tmp_path, extra_env=env) as server:
        alice, bob, carol = members(3)
        first = await build_group(server, alice, bob, carol)
        second = await build_group(server, alice, carol)
        # Carol is away; six messages fill her queue.
        async with connections(server, alice, bob) as (a, b):
            for i in range(6):
                assert (await a.call(application(alice, first, b"%d" % i))).recipients == 2
            assert len(await receive(b, bob)) == 6
            # A commit still lands: the others get it, carol a gap notice.
            published = await publish_commit(b, bob, bob.mls.self_update(first))
            assert (published.recipients, published.epoch) == (1, 2)
            await receive(a, alice)
            for _ in range(3):
                assert (await a.call(application(alice, first, b"missed"))).recipients == 1
            assert (await a.call(application(alice, second, b"missed too"))).recipients == 0
            assert len(await receive(b, bob)) == 3
        async with authed(server, carol.identity) as c:
            queued = await drain(c)
            # Exactly one gap notice per group, after what did fit.
            assert len(queued) == 8
            assert _gaps(queued) == [first, second]
            gap = queued[6]
            assert (gap.sender, gap.payload) == (NO_SENDER, b"")
            assert plaintexts(process(carol, queued)) == [b"%d" % i for i in range(6)]
            # She rejoins both groups by external commit from what the server serves.
            for group_id in (first, second):
                assert (await rejoin(c, carol, group_id)).epoch == carol.epoch(group_id)
        async with connections(server, alice, bob) as (a, b):
            for member, client in ((alice, a), (bob, b)):
                for applied in await receive(client, member):
                    assert isinstance(applied, qpq_core.CommitApplied)
                    assert (applied.external, applied.committer) == (True, carol.key)
        assert len({m.exporter(first) for m in (alice, bob, carol)}) == 1
        assert len({m.exporter(second) for m in (alice, carol)}) == 1
        # And she talks with the others again.
        async with authed(server, carol.identity) as c:
            await send(c, carol, first, b"back again")
        async with connections(server, alice, bob) as (a, b):
            assert plaintexts(await receive(a, alice)) == [b"back again"]
            assert plaintexts(await receive(b, bob)) == [b"back again"]


async def test_a_stranger_cannot_fill_a_queue(tmp_path: Path) -> None:
    env = {**NO_RATE_LIMIT, "QPQ_QUEUE_DEPTH": "10", "QPQ_QUEUE_DEPTH_PER_SENDER": "4"}
    with ServerProcess(tmp_path, extra_env=env) as server:
        victim, friend, mallory = members(3)
        friends = await build_group(server, friend, victim)
        # Anyone may invite the victim (KeyPackages are public) and then write to them.
        async with authed(server, victim.identity) as v:
            await upload_key_package(v, victim)
            await upload_key_package(v, victim)
        async with authed(server, mallory.identity) as m:
            spam = await create_group(m, mallory)
            package = await claim(m, victim.key)
            added = await publish_commit(m, mallory, mallory.mls.add_members(spam, [package]))
            assert added.recipients == 1  # the Welcome: one of her four
            reached = [(await m.call(application(mallory, spam, b"spam"))).recipients]
            reached += [
                (await m.call(application(mallory, spam, b"spam"))).recipients for _ in range(7)
            ]
            assert reached == [1, 1, 1, 0, 0, 0, 0, 0]
            # Another group gives her no second share: its Welcome becomes a gap notice.
            more = await create_group(m, mallory)
            package = await claim(m, victim.key)
            added = await publish_commit(m, mallory, mallory.mls.add_members(more, [package]))
            assert added.recipients == 0
        # Other senders still get through.
        async with authed(server, friend.identity) as f:
            for i in range(4):
                assert (await f.call(application(friend, friends, b"hi %d" % i))).recipients == 1
        async with authed(server, victim.identity) as v:
            queued = await drain(v)
        assert _gaps(queued) == [spam, more]
        assert sum(1 for e in queued if e.sender == mallory.key) == 4
        assert plaintexts(process(victim, queued))[-4:] == [b"hi %d" % i for i in range(4)]


async def test_a_wide_fan_out_pays_for_its_width(tmp_path: Path) -> None:
    burst = 40
    env = {"QPQ_RATE_PER_SECOND": "0.001", "QPQ_RATE_BURST": str(burst)}

    def extra(recipients: int) -> int:
        return max(0, math.ceil(recipients / RECIPIENTS_PER_TOKEN) - 1)

    crowd = [qpq_core.MlsClient(qpq_core.Identity.generate()) for _ in range(500)]
    packages = [c.create_key_packages(1).packages[0] for c in crowd]
    alice = Member.generate()
    with ServerProcess(tmp_path, extra_env=env) as server:
        async with authed(server, alice.identity) as client:
            group_id = await create_group(client, alice)
            # One commit adds 500: its Welcome's fan-out is billed once verified.
            added = await publish_commit(client, alice, alice.mls.add_members(group_id, packages))
            assert added.recipients == 500
            # An application message to 500 is billed after its fan-out.
            assert (await client.call(application(alice, group_id, b"all"))).recipients == 500
            # A commit to 501 members pays for its fan-out before it is verified.
            await publish_commit(client, alice, alice.mls.self_update(group_id))
            # Registering alice's account (RegisterUser) and creating the group
            # took one token each.
            left = burst - 2 - (1 + extra(1 + 500)) - (1 + extra(500)) - (1 + extra(501))
            assert left == 21
            for _ in range(left - 3):
                await client.call(Fetch(limit=1))
            # Three tokens left: the call is paid, its fan-out is not, so it is refused
            # before verification, and the group stays where it was.
            with pytest.raises(RateLimitedError):
                await publish_commit(client, alice, alice.mls.self_update(group_id))
            for _ in range(2):
                await client.call(Fetch(limit=1))
            with pytest.raises(RateLimitedError):
                await client.call(Fetch(limit=1))
        member = Member(crowd[0].identity, crowd[0])
        async with authed(server, member.identity) as client:
            assert (await snapshot(client, group_id)).epoch == 2


async def test_a_group_has_at_most_max_recipients_members(tmp_path: Path) -> None:
    env = {**NO_RATE_LIMIT, "QPQ_MAX_RECIPIENTS": "3"}
    with ServerProcess(tmp_path, extra_env=env) as server:
        alice, bob, carol, dave = members(4)
        group_id = await build_group(server, alice, bob, carol)
        async with authed(server, dave.identity) as client:
            await upload_key_package(client, dave)
        async with authed(server, alice.identity) as client:
            package = await claim(client, dave.key)
            with pytest.raises(InvalidArgumentError):
                await publish_commit(client, alice, alice.mls.add_members(group_id, [package]))
            assert (await snapshot(client, group_id)).epoch == 1
            # The group goes on: the refused commit was not kept.
            await publish_commit(client, alice, alice.mls.self_update(group_id))
        async with authed(server, dave.identity) as client:
            assert await fetch_all(client) == ()
        async with connections(server, bob, carol) as (b, c):
            await receive(b, bob)
            await receive(c, carol)
        assert len({m.exporter(group_id) for m in (alice, bob, carol)}) == 1
