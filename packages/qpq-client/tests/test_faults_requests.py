"""A request flood at scale: strangers push many MiB into groups the victim never accepts.

Every stranger creates groups, invites the victim (who holds each
invitation as a request: they are no contacts) and pushes 1 MiB messages
into them while the victim follows its subscription. More invitations
arrive than a profile holds, and far more bytes than a request may keep.
Afterwards the victim's profile on disk has grown by the request bounds at
most (``qpq_client._request_bounds``: 4 MiB of what strangers sent, plus
the rows' overhead), everything pushed was acknowledged (the server holds
nothing more for it), and what was not kept is counted. ``tox -e soak`` runs
it with more strangers and MiB (``SOAK_SCALE``).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from faults import MIB, SCALE, fault_server, open_member, report

from qpq_client import Client, GroupStatus, _request_bounds

pytestmark = pytest.mark.slow

STRANGERS = 2 * SCALE
#: Groups each stranger invites the victim to: with 16 strangers (SOAK_SCALE
#: 8) that is 48 invitations, more than the 32 a profile holds.
GROUPS_EACH = 3
MESSAGES_EACH = 1 + SCALE
#: What the profile may grow by beyond the request bounds: rows and pages.
OVERHEAD_BOUND = 1 * MIB


def profile_bytes(home: Path) -> int:
    return sum(path.stat().st_size for path in home.glob("state.db*"))


async def _follow(client: Client, shown: list[str]) -> None:
    async for entry in client.follow():
        shown.append(entry.body)


async def test_a_request_flood_at_scale_stays_within_the_bound(tmp_path: Path) -> None:
    limits = _request_bounds.REQUEST_LIMITS
    with fault_server(tmp_path) as server:
        victim = (await open_member(tmp_path / "victim", "victim-flood", server)).client
        strangers = [
            (await open_member(tmp_path / f"s{n}", f"stranger{n}-flood", server)).client
            for n in range(STRANGERS)
        ]
        try:
            before = profile_bytes(victim.home)
            shown: list[str] = []
            follower = asyncio.ensure_future(_follow(victim, shown))
            started = asyncio.get_running_loop().time()
            pushed = 0

            async def flood(stranger: Client) -> int:
                sent = 0
                for g in range(GROUPS_EACH):
                    name = f"flood-{g}"
                    await stranger.create_group(name)
                    await stranger.invite(name, ["victim-flood"])
                    for _ in range(MESSAGES_EACH):
                        await stranger.send(name, "x" * (MIB - 4096))
                        sent += MIB
                return sent

            pushed = sum(await asyncio.gather(*(flood(s) for s in strangers)))
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            # Whatever the follower had not taken yet: until the server holds nothing.
            while await victim.receive():
                pass
            session = victim._session
            assert session is not None
            assert await session.conn.fetch(1) == ()
            seconds = asyncio.get_running_loop().time() - started
            requests = [g for g in victim.groups() if g.status is GroupStatus.REQUESTED]
            not_kept = sum(g.dropped for g in requests)
            dropped_requests = victim.requests_dropped
        finally:
            for client in (victim, *strangers):
                with contextlib.suppress(Exception):
                    await client.close()
        grown = profile_bytes(victim.home) - before
    invitations = STRANGERS * GROUPS_EACH
    report(
        f"request flood: {STRANGERS} strangers, {invitations} invitations, {pushed // MIB} MiB"
        f" pushed in {seconds:.1f} s; the victim holds {len(requests)} requests, did not keep"
        f" {not_kept} messages nor {dropped_requests} invitations; its profile grew"
        f" {grown / MIB:.2f} MiB (bound {(limits.max_total_bytes + OVERHEAD_BOUND) / MIB:.0f})"
    )
    assert len(requests) == min(invitations, limits.max_requests)
    assert dropped_requests == max(0, invitations - limits.max_requests)
    assert grown < limits.max_total_bytes + OVERHEAD_BOUND
