"""A 20-member group against a real server.

The 20 members run in-process through the library (the same code the CLI is
a shell over): 20 times a dozen `qpq` subprocesses would spend the time budget
on interpreter start-up, not on what is being tested.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qpq_client import Client, ServerAddress, Trust
from qpq_server.testing import RunningServer

pytestmark = pytest.mark.slow

MEMBERS = 20


async def test_twenty_member_group(server: RunningServer, tmp_path: Path) -> None:
    address = ServerAddress(server.host, server.port)
    trust = Trust(pin=server.fingerprint)
    clients = [
        await Client.create(
            tmp_path / f"u{n}", "pw", f"user{n}", server=address, trust=trust, token=server.token
        )
        for n in range(MEMBERS)
    ]
    try:
        owner, *others = clients
        for client in others:
            await client.add_contact(owner.username)  # so the invitation is joined, not held
        await owner.create_group("big")
        added = await owner.invite("big", [c.username for c in others])
        assert sorted(added) == sorted(c.username for c in others)
        for client in others:
            entries = await client.receive(wait=10)
            assert [e.body for e in entries] == ["you joined (invited by user0)"]
            assert client.groups()[0].name == "big"
        await others[-1].send("big", "hello from the last one")
        for client in clients[:-1]:
            entries = await client.receive(wait=10)
            assert [(e.sender, e.body) for e in entries] == [("user19", "hello from the last one")]
        expected = sorted(c.username for c in clients)
        for client in (owner, others[0], others[-1]):
            assert sorted(await client.members("big")) == expected
    finally:
        for client in clients:
            await client.close()
