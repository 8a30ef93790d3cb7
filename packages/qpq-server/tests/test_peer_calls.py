"""Calls between peers (qpq-p2p) reach a server only by mistake: it answers unsupportedCall."""

from __future__ import annotations

import pytest

import qpq_core
from qpq_proto import (
    ErrorCode,
    ErrorResponse,
    Health,
    HealthStatus,
    PeerAuthenticate,
    PeerChallenge,
    PeerDeliver,
    Request,
)
from qpq_server.testing import RunningServer

PEER_CALLS = [
    PeerChallenge(),
    PeerAuthenticate(identity_key=bytes(32), nonce=bytes(32), signature=bytes(64)),
    PeerDeliver(payload=b"an mls message"),
]


@pytest.mark.parametrize("call", PEER_CALLS, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("token", ["own", "none"])
async def test_a_server_answers_peer_calls_unsupported(
    server: RunningServer, call: object, token: str
) -> None:
    async with server.connect() as client:
        # With the token and a proven identity, or with nothing: the same answer.
        if token == "own":
            await client.authenticate(qpq_core.Identity.generate())
        answer = await client.request(
            Request(call=call, token=server.token if token == "own" else "")  # type: ignore[arg-type]
        )
        assert isinstance(answer, ErrorResponse)
        assert answer.code is ErrorCode.UNSUPPORTED_CALL
        assert type(call).__name__ in answer.message
        # The connection serves the next call as usual.
        assert isinstance(await client.request(Request(call=Health())), HealthStatus)
