"""Concurrent callers inside one profile: each operation is its own transaction.

A subscription processes what arrives in batches that stay open across
awaits; sends, and writes that need no server (settings, the invite
policy), run beside it from other tasks. Nothing of one may end up in
another's transaction; every row must be there once, in order.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import MakeClient

from qpq_client import Client, DirectDelivery, InvitePolicy

pytestmark = pytest.mark.slow

#: Messages each side sends, and setting changes made meanwhile.
COUNT = 20


async def _texts_from(client: Client, sender: str, count: int) -> list[str]:
    got: list[str] = []
    while len(got) < count:
        entries = await client.receive(wait=10)
        assert entries, f"{client.username} got {got} of {count}"
        got += [e.body for e in entries if e.kind == "text" and e.sender == sender]
    return got


async def test_sends_receives_settings_and_a_subscription_interleave_in_one_profile(
    make_client: MakeClient,
) -> None:
    alice, bob = await make_client("alice"), await make_client("bob")
    await bob.add_contact(alice.username)
    await alice.create_group("busy")
    await alice.invite("busy", [bob.username])
    assert [e.kind for e in await bob.receive(wait=10)] == ["event"]

    followed: list[str] = []
    all_followed = asyncio.Event()

    async def follow() -> None:
        async for entry in alice.follow():
            if entry.kind == "text":
                followed.append(entry.body)
                if len(followed) == COUNT:
                    all_followed.set()

    async def bob_sends() -> None:
        for n in range(COUNT):
            await bob.send("busy", f"from bob {n}")

    async def alice_sends() -> None:
        for n in range(COUNT):
            await alice.send("busy", f"from alice {n}")

    async def alice_changes_settings() -> None:
        for n in range(COUNT):
            policy = InvitePolicy.ANYONE if n % 2 else InvitePolicy.CONTACTS
            await alice.set_invite_policy(policy)
            await alice.set_direct_delivery(DirectDelivery(False, "127.0.0.1", 7000 + n, False))

    subscription = asyncio.create_task(follow())
    try:
        await asyncio.gather(bob_sends(), alice_sends(), alice_changes_settings())
        await asyncio.wait_for(all_followed.wait(), 60)
    finally:
        subscription.cancel()
        await asyncio.gather(subscription, return_exceptions=True)

    # Every row, once, in order: what the subscription showed, what alice
    # keeps, what bob got, and the last of each setting.
    bobs = [f"from bob {n}" for n in range(COUNT)]
    alices = [f"from alice {n}" for n in range(COUNT)]
    assert followed == bobs
    kept = [(e.sender, e.body) for e in alice.history("busy") if e.kind == "text"]
    assert [body for sender, body in kept if sender == bob.username] == bobs
    assert [body for sender, body in kept if sender == alice.username] == alices
    assert len(kept) == 2 * COUNT
    assert await _texts_from(bob, alice.username, COUNT) == alices
    assert await bob.receive(wait=0) == []
    assert alice.invite_policy is InvitePolicy.ANYONE
    assert alice.direct_delivery().port == 7000 + COUNT - 1
    assert alice.outbox() == []
