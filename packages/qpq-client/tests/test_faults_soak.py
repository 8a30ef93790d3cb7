"""Soak: many members send and receive for a bounded time; nothing lost, memory flat.

Members send to one group concurrently in rounds while each of them also
receives; a self-update commit lands every few rounds. Afterwards every
member has every other member's messages exactly once, in sending order,
and all agree on the group's secrets. The server's resident memory is read
at the start, after a warm-up third of the rounds and at the end: once
warm, it must stay flat (within :data:`GROWTH_BOUND`), since every message
was acknowledged and nothing should stay behind. ``tox -e soak`` runs it
with more members and rounds (``SOAK_SCALE``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from faults import (
    MIB,
    SCALE,
    Member,
    catch_up,
    check_exactly_once_in_order,
    fault_server,
    form_group,
    has_all,
    open_member,
    receive_until,
    report,
    rss,
    send_all,
)

pytestmark = pytest.mark.slow

MEMBERS = min(3 + SCALE, 12)
ROUNDS = 6 * SCALE
PER_ROUND = 3
#: How much the server's RSS may grow after the warm-up (allocator noise, caches).
GROWTH_BOUND = 48 * MIB


async def test_many_members_for_a_while_lose_nothing_and_server_memory_stays_flat(
    tmp_path: Path,
) -> None:
    with fault_server(tmp_path) as server:
        pid = server.process.pid
        names = [f"m{i}" for i in range(MEMBERS)]
        members = [await open_member(tmp_path / n, f"{n}-soak", server) for n in names]
        try:
            owner, *others = members
            await form_group(owner, others)
            at_start = rss(pid)
            warm = at_start
            started = asyncio.get_running_loop().time()
            for round_number in range(ROUNDS):
                # Every other round, one member (in turn) also commits.
                committer = members[round_number % MEMBERS] if round_number % 2 else None

                async def talk(member: Member, committer: Member | None = committer) -> None:
                    await send_all(member, PER_ROUND)
                    if member is committer:
                        await member.client.update(member.group)
                    await member.client.receive(wait=0)

                await asyncio.gather(*(talk(m) for m in members))
                if round_number + 1 == max(1, ROUNDS // 3):
                    warm = rss(pid)
            expected = {m.name: m.sent for m in members}
            for member in members:
                await receive_until(member, has_all(expected), within=60 * SCALE)
            await catch_up(*members)  # the last round's commit, after its messages
            took = asyncio.get_running_loop().time() - started
            at_end = rss(pid)
            check_exactly_once_in_order(members, expected)
            assert all(m.unreadable() == [] for m in members)
            assert len({m.exporter() for m in members}) == 1
            sent = sum(len(m.sent) for m in members)
            report(
                f"soak: {MEMBERS} members, {sent} messages and {ROUNDS // 2} commits in "
                f"{took:.1f} s; server RSS {at_start / MIB:.0f} MiB at start, "
                f"{warm / MIB:.0f} MiB after warm-up, {at_end / MIB:.0f} MiB at end"
            )
            assert at_end - warm <= GROWTH_BOUND, (at_start, warm, at_end)
        finally:
            for member in members:
                await member.client.close()
