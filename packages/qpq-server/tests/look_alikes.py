"""Look-alike usernames registered at once by two identities, through one server or two."""

from __future__ import annotations

import asyncio
import contextlib

from server_helpers import authed

import qpq_core
from qpq_proto import RegisterUser, ResolveUser
from qpq_proto.errors import AlreadyExistsError
from qpq_server.testing import RunningServer

#: Look-alikes registered at once by two identities, each pair in one round.
#: (Digits after the Greek: Greek and Latin together are refused.)
RACING = [("alice-c", "aIice-c"), ("abe-7", "\u0391\u0392\u0395-7"), ("mike-c", "mIke-c")]


async def race(servers: tuple[RunningServer, RunningServer], rounds: int) -> None:
    """Register each pair of :data:`RACING` at once, one name through each server,
    ``rounds`` times: exactly one of each pair is stored, and both names find it."""
    for round_ in range(rounds):
        for first, second in RACING:
            names = (f"{first}{round_}", f"{second}{round_}")
            people = (qpq_core.Identity.generate(), qpq_core.Identity.generate())
            async with contextlib.AsyncExitStack() as stack:
                clients = [
                    await stack.enter_async_context(authed(server, who))
                    for server, who in zip(servers, people, strict=True)
                ]
                outcomes = await asyncio.gather(
                    *(
                        client.call(RegisterUser(name))
                        for client, name in zip(clients, names, strict=True)
                    ),
                    return_exceptions=True,
                )
                stored = [not isinstance(outcome, BaseException) for outcome in outcomes]
                assert sorted(stored) == [False, True], (names, outcomes)
                assert isinstance(outcomes[stored.index(False)], AlreadyExistsError), outcomes
                winner = people[stored.index(True)]
                for name in names:
                    found = await clients[0].call(ResolveUser(name))
                    assert found.identity_key == winner.public_key, (names, outcomes)
