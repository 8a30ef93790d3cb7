"""A lossy network between library clients and a real server.

Every datagram between the clients and the server goes through a relay on
127.0.0.1 that drops, delays, duplicates and reorders it (seeded random).
QUIC must recover all of it: the group is built, messages and a commit
flow while the relay does its worst, and afterwards every member has every
other member's messages exactly once, in the order they were sent, and
all members agree on the group's secrets.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from faults import (
    SCALE,
    Impairment,
    Member,
    check_exactly_once_in_order,
    fault_server,
    form_group,
    has_all,
    lossy_relay,
    open_member,
    receive_until,
    report,
    send_all,
)

pytestmark = pytest.mark.slow

#: The networks each run survives; ``tox -e soak`` adds harsher ones.
NETWORKS = {
    "10pc-loss": Impairment(loss=0.10, duplicate=0.02, delay_ms=(0, 30)),
    **(
        {
            "25pc-loss": Impairment(loss=0.25, duplicate=0.05, delay_ms=(0, 80)),
            "reordering": Impairment(loss=0.05, duplicate=0.10, delay_ms=(0, 200)),
        }
        if SCALE > 1
        else {}
    ),
}


@pytest.mark.parametrize("network", list(NETWORKS))
async def test_every_message_arrives_once_and_in_order_over_a_lossy_network(
    tmp_path: Path, network: str
) -> None:
    impairment = NETWORKS[network]
    per_member = 12 * SCALE
    with fault_server(tmp_path) as server:
        async with lossy_relay(server, impairment, seed=20260101) as relay:
            members = [
                await open_member(tmp_path / name, f"{name}-net", server, relay.address())
                for name in ("alice", "bob", "carol")
            ]
            try:
                alice, *others = members
                await form_group(alice, others)

                async def talk(member: Member) -> None:
                    await send_all(member, per_member // 2)
                    if member is alice:
                        await member.client.update(member.group)  # a commit amid the traffic
                    await send_all(member, per_member - per_member // 2)

                started = asyncio.get_running_loop().time()
                await asyncio.gather(*(talk(m) for m in members))
                expected = {m.name: m.sent for m in members}
                for member in members:
                    await receive_until(member, has_all(expected), within=60 * SCALE)
                took = asyncio.get_running_loop().time() - started
                check_exactly_once_in_order(members, expected)
                assert [m.unreadable() for m in members] == [[], [], []]
                assert len({m.exporter() for m in members}) == 1
                stats = relay.stats
                report(
                    f"{network} ({impairment}): {3 * per_member} messages and a commit "
                    f"in {took:.1f} s; {stats.datagrams} datagrams, {stats.dropped} dropped, "
                    f"{stats.duplicated} duplicated, {stats.overtaken} overtaken"
                )
                assert stats.dropped > 0
                assert stats.duplicated > 0
                assert stats.overtaken > 0
            finally:
                for member in members:
                    await member.client.close()
