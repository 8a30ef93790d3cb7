"""Raw protocol calls on one connection: the server's health check and test harness.

A thin layer over :class:`qpq_proto.quic.Transport`, the one client-side QUIC
adapter of the project (qpq-client and qpq-p2p call through it too): calls
return results and raise the coded error of an ErrorResponse
(:func:`qpq_proto.quic.call_result`); nothing is retried or interpreted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from qpq_proto import (
    ALPN,
    DEFAULT_LIMITS,
    RESULT_OF,
    Authenticate,
    Challenge,
    ChallengeNonce,
    Envelope,
    ErrorResponse,
    Limits,
    RegisterUser,
    Request,
    ResolveIdentity,
    Result,
    Subscribe,
    challenge_transcript,
)
from qpq_proto.errors import ForbiddenError, NotFoundError
from qpq_proto.quic import Transport, call_result, subscribe

__all__ = ["CALL_SECONDS", "CallClient", "Signer", "harness_username", "open_client"]

#: How long a call may wait for its answer.
CALL_SECONDS = 60.0


class Signer(Protocol):
    """An identity: ``qpq_core.Identity`` or anything with the same two members."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class CallClient:
    """Raw protocol calls on one connection."""

    def __init__(self, transport: Transport, token: str) -> None:
        self.transport = transport
        self.token = token

    @property
    def protocol(self) -> Any:
        """The underlying aioquic protocol (for tests that reach below the adapter)."""
        return self.transport.quic

    @property
    def closed_reason(self) -> str | None:
        """Why the server ended the connection, or None while it is open."""
        return self.transport.closed_reason

    async def wait_closed(self) -> None:
        """Return once the connection has ended."""
        await self.transport.wait_closed()

    async def request(self, request: Request) -> Result | ErrorResponse:
        """Send ``request``; return the result or the ErrorResponse as received."""
        return await self.transport.call(request, answer_within=CALL_SECONDS)

    async def call(self, call: Any, *, token: str | None = None) -> Any:
        """Send ``call`` with the client's token; return its result or raise its ServiceError."""
        request = Request(call=call, token=self.token if token is None else token)
        return await call_result(
            self.transport, request, RESULT_OF[type(call)], answer_within=CALL_SECONDS
        )

    async def authenticate(
        self, identity: Signer, *, register: bool = True, invite: str = ""
    ) -> None:
        """Prove ``identity`` on this connection (Challenge, then Authenticate).

        With ``register`` (the default), an identity that has no account yet
        then registers one (RegisterUser, with ``invite`` if given) under a
        name made from its key, ``t`` and 24 hex digits (:func:`harness_username`):
        every call that acts for an identity needs an active account. A test
        that registers names of its own registers again (a rename), or
        passes ``register=False``.
        """
        nonce: ChallengeNonce = await self.call(Challenge())
        key = identity.public_key
        signature = identity.sign(challenge_transcript(nonce.nonce, key))
        await self.call(Authenticate(identity_key=key, signature=signature))
        if not register:
            return
        try:
            await self.call(ResolveIdentity(identity_key=key))
        except (NotFoundError, ForbiddenError):
            # No name (or, on a server without a token, no lookups before an
            # account): register one. A suspended account is refused again.
            await self.call(RegisterUser(username=harness_username(key), invite=invite))

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Envelope]]:
        """Open a subscribe stream; yields an iterator of the envelopes pushed on it.

        Raises the ServiceError if the server refuses the subscription; the
        iterator raises the one of an error event that ends it
        (:func:`qpq_proto.quic.subscribe`). Leaving the block resets the
        stream, which ends it on the server.
        """
        request = Request(call=Subscribe(), token=self.token)
        async with subscribe(self.transport, request) as envelopes:
            yield envelopes

    async def raw(self, data: bytes, *, end_stream: bool = True, reset: bool = False) -> bytes:
        """Write raw bytes on a new stream; return all bytes the server answered."""
        return await self.transport.raw(data, end_stream=end_stream, reset=reset)


def harness_username(identity_key: bytes) -> str:
    """The name :meth:`CallClient.authenticate` registers for an identity."""
    return "t" + identity_key.hex()[:24]


@asynccontextmanager
async def open_client(
    host: str,
    port: int,
    *,
    token: str = "",
    ca_pem: str | None = None,
    pin: str | None = None,
    server_name: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    idle_timeout: float = 120.0,
    connect_timeout: float = 10.0,
) -> AsyncIterator[CallClient]:
    """Connect to a qpq server and yield a :class:`CallClient`.

    The certificate is checked against ``ca_pem`` or the ``pin`` (SHA-256 hex
    of its DER) before any request, and so the token, is sent.

    Raises:
        ConnectionFailedError: unreachable, or the certificate does not match.
    """
    transport = await Transport.open(
        host,
        port,
        alpn=ALPN,
        ca_pem=ca_pem,
        pin=pin,
        server_name=server_name,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
        limits=limits,
    )
    try:
        yield CallClient(transport, token)
    finally:
        await transport.close()
