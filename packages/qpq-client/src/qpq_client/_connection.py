"""Typed calls over a :class:`~qpq_client._transport.Transport`.

One method per protocol call. Coded server errors come back as the
:mod:`qpq_proto.errors` exception of their code; a call that needs the
access token or a proven identity which this connection lacks raises
:class:`NotAuthenticatedError` before anything is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import qpq_proto as p
from qpq_client._config import ServerAddress, Trust
from qpq_client._errors import NotAuthenticatedError
from qpq_client._transport import Transport

__all__ = ["Connection"]

_R = TypeVar("_R", bound=p.Result)

#: Calls that act for the proven identity (DESIGN.md, "Identity binding").
_IDENTITY_BOUND: tuple[type[p.Call], ...] = (
    p.RegisterUser,
    p.UploadKeyPackages,
    p.UploadLastResort,
    p.CountKeyPackages,
    p.Enqueue,
    p.Publish,
    p.Fetch,
    p.FetchWait,
    p.Ack,
    p.Subscribe,
    p.PublishEndpoints,
    p.DeleteAccount,
)

_FIRST_BACKOFF_SECONDS = 0.05
_MAX_BACKOFF_SECONDS = 3.2

#: How long a plain call may take before the connection counts as failed.
CALL_TIMEOUT_SECONDS = 30.0


class Connection:
    """An open connection to a qpq server.

    Args:
        transport: the QUIC connection.
        token: the server access token ("" means none: only Health works).
    """

    def __init__(self, transport: Transport, token: str) -> None:
        self._transport = transport
        self._token = token
        self.identity_key: bytes | None = None

    @classmethod
    async def open(
        cls, address: ServerAddress, trust: Trust, token: str, *, connect_timeout: float = 5.0
    ) -> Connection:
        """Connect to ``address``, checking the server certificate against ``trust``."""
        transport = await Transport.open(address, trust, connect_timeout=connect_timeout)
        return cls(transport, token)

    async def close(self) -> None:
        """Close the connection."""
        await self._transport.close()

    async def _call(self, call: p.Call, expected: type[_R], *, wait_s: float = 0.0) -> _R:
        if not isinstance(call, p.Health) and not self._token:
            raise NotAuthenticatedError(
                "no access token: give --token or set $QPQ_TOKEN before talking to the server"
            )
        if isinstance(call, _IDENTITY_BOUND) and self.identity_key is None:
            raise NotAuthenticatedError(
                f"{type(call).__name__} needs a proven identity: authenticate first"
            )
        request = p.Request(call, token=self._token)
        delay = _FIRST_BACKOFF_SECONDS
        while True:
            response = await self._transport.call(request, CALL_TIMEOUT_SECONDS + wait_s)
            if not isinstance(response, p.ErrorResponse):
                break
            error = response.to_exception()
            # The server refuses a rate-limited call before handling it, so
            # trying again later is safe; give up after a bounded wait.
            if not isinstance(error, p.errors.RateLimitedError) or delay > _MAX_BACKOFF_SECONDS:
                raise error
            await asyncio.sleep(delay)
            delay *= 2
        if not isinstance(response, expected):  # ClientCall already checks; belt and braces
            raise p.errors.MalformedMessageError(
                f"{type(response).__name__} does not answer {type(call).__name__}"
            )
        return response

    async def health(self) -> p.HealthStatus:
        """Liveness and version of the server (needs no token)."""
        return await self._call(p.Health(), p.HealthStatus)

    async def authenticate(self, identity_key: bytes, sign: Callable[[bytes], bytes]) -> None:
        """Prove ``identity_key`` on this connection by signing the server's challenge."""
        nonce = (await self._call(p.Challenge(), p.ChallengeNonce)).nonce
        signature = sign(p.challenge_transcript(nonce, identity_key))
        await self._call(p.Authenticate(identity_key, signature), p.Done)
        self.identity_key = identity_key

    async def register_user(self, username: str) -> None:
        """Register ``username`` for the proven identity."""
        await self._call(p.RegisterUser(username), p.Done)

    async def resolve_user(self, username: str) -> bytes:
        """The identity key of ``username`` (NotFoundError if unknown)."""
        return (await self._call(p.ResolveUser(username), p.UserKey)).identity_key

    async def resolve_identity(self, identity_key: bytes) -> str:
        """The username of ``identity_key`` (NotFoundError if none)."""
        return (await self._call(p.ResolveIdentity(identity_key), p.Username)).username

    async def upload_key_packages(self, packages: tuple[bytes, ...]) -> p.Fingerprints:
        """Upload single-use KeyPackages."""
        return await self._call(p.UploadKeyPackages(packages), p.Fingerprints)

    async def upload_last_resort(self, package: bytes) -> p.Fingerprint:
        """Upload (or replace) the last-resort KeyPackage."""
        return await self._call(p.UploadLastResort(package), p.Fingerprint)

    async def fetch_key_package(self, identity_key: bytes) -> bytes:
        """Claim one KeyPackage of ``identity_key``."""
        call = p.FetchKeyPackage(identity_key)
        return (await self._call(call, p.ClaimedKeyPackage)).package

    async def count_key_packages(self) -> p.KeyPackageCount:
        """How many unclaimed KeyPackages the proven identity has."""
        return await self._call(p.CountKeyPackages(), p.KeyPackageCount)

    async def enqueue(self, recipient: bytes, payload: bytes) -> int:
        """Queue ``payload`` for one recipient; returns its seq there."""
        return (await self._call(p.Enqueue(recipient, payload), p.Enqueued)).seq

    async def publish(
        self,
        group_id: bytes,
        epoch: int,
        kind: p.MessageKind,
        payload: bytes,
        recipients: tuple[bytes, ...],
    ) -> int:
        """Fan a group message out; EpochConflictError if a commit lost the race."""
        call = p.Publish(group_id, epoch, kind, payload, recipients)
        return (await self._call(call, p.Published)).recipients

    async def fetch(self, limit: int) -> tuple[p.Envelope, ...]:
        """Queued messages, oldest first (they stay until acknowledged)."""
        return (await self._call(p.Fetch(limit), p.Messages)).messages

    async def fetch_wait(self, limit: int, wait_ms: int) -> tuple[p.Envelope, ...]:
        """Like :meth:`fetch`, waiting up to ``wait_ms`` for a first message."""
        call = p.FetchWait(limit, wait_ms)
        return (await self._call(call, p.Messages, wait_s=wait_ms / 1000)).messages

    async def ack(self, up_to_seq: int) -> int:
        """Delete every queued message up to ``up_to_seq``."""
        return (await self._call(p.Ack(up_to_seq), p.Acked)).removed

    async def subscribe(self) -> AsyncIterator[p.Envelope]:
        """The queue's backlog, then each new message as it arrives."""
        if not self._token or self.identity_key is None:
            await self._call(p.Subscribe(), p.Subscribed)  # raises NotAuthenticatedError
        request = p.Request(p.Subscribe(), token=self._token)
        async for item in self._transport.stream(request):
            if isinstance(item, p.ErrorResponse):
                raise item.to_exception()
            if isinstance(item, p.Envelope):
                yield item
