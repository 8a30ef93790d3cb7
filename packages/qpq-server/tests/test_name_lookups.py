"""Many identity keys to usernames in one call, and the limits a server announces.

ResolveIdentities exists so that a commit adding hundreds of members costs a
receiver one round trip (the client side is in qpq-client's
test_bounded_profile.py); the challenge answer tells a client the limits it
must respect before it encrypts a message, and how long a queued copy of a
message can still arrive.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from server_helpers import authed

import qpq_core
from qpq_proto import (
    DEFAULT_LIMITS,
    Challenge,
    RegisterUser,
    ResolveIdentities,
    ResolveIdentity,
)
from qpq_proto.errors import InvalidArgumentError, NotFoundError
from qpq_server._dispatch import call_cost
from qpq_server.testing import RunningServer, ServerProcess


async def test_many_keys_resolve_in_one_call_in_order(server: RunningServer) -> None:
    named = [qpq_core.Identity.generate() for _ in range(3)]
    for n, identity in enumerate(named):
        async with authed(server, identity) as client:
            await client.call(RegisterUser(f"lookup-{n}"))
    nameless = qpq_core.Identity.generate().public_key
    keys = (named[2].public_key, nameless, named[0].public_key, named[2].public_key)
    async with server.connect() as client:
        answer = await client.call(ResolveIdentities(identity_keys=keys))
        assert answer.usernames == ("lookup-2", "", "lookup-0", "lookup-2")
        # The one-key call still answers notFound for a key without a name.
        with pytest.raises(NotFoundError):
            await client.call(ResolveIdentity(identity_key=nameless))


async def test_more_keys_than_the_limit_are_refused(server: RunningServer) -> None:
    keys = tuple(n.to_bytes(32, "big") for n in range(DEFAULT_LIMITS.max_resolve_identities + 1))
    async with server.connect() as client:
        assert len((await client.call(ResolveIdentities(identity_keys=keys[:-1]))).usernames) == (
            DEFAULT_LIMITS.max_resolve_identities
        )
        with pytest.raises(InvalidArgumentError) as refused:
            await client.call(ResolveIdentities(identity_keys=keys))
    assert refused.value.field == "identity_keys"


def test_a_lookup_costs_one_token_per_hundred_keys() -> None:
    def cost(count: int) -> float:
        keys = tuple(n.to_bytes(32, "big") for n in range(count))
        return call_cost(ResolveIdentities(identity_keys=keys))

    assert [cost(1), cost(100), cost(101), cost(1000)] == [1, 1, 2, 10]


async def test_the_challenge_announces_the_servers_limits(tmp_path: Path) -> None:
    env = {"QPQ_MAX_PAYLOAD_BYTES": str(3 * 1024 * 1024), "QPQ_MESSAGE_TTL_SECONDS": "3600"}
    with ServerProcess(tmp_path, extra_env=env) as server:
        async with server.connect() as client:
            nonce = await client.call(Challenge())
    assert (nonce.max_payload_bytes, nonce.max_message_bytes, nonce.message_ttl_seconds) == (
        3 * 1024 * 1024,
        DEFAULT_LIMITS.max_message_bytes,
        3600,
    )
