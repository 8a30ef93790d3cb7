"""Typed calls to a qpq server over :class:`qpq_proto.quic.Transport`.

One method per protocol call. Coded server errors come back as the
:mod:`qpq_proto.errors` exception of their code; a call that needs a
proven identity which this connection lacks raises
:class:`~qpq_proto.errors.UnauthenticatedError` before anything is sent
(:data:`qpq_proto.ACCESS` says which calls need what). The access token is
an optional gate of the server: an empty one is sent as it is, and a server
that wants one answers ``unauthenticated``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Protocol, TypeVar

import qpq_proto as p
from qpq_client._config import ServerAddress, Trust
from qpq_proto.errors import (
    ConnectionFailedError,
    MalformedMessageError,
    NotFoundError,
    RateLimitedError,
    UnauthenticatedError,
    UnsupportedCallError,
)
from qpq_proto.quic import (
    AckedSubscription,
    Transport,
    call_result,
    subscribe,
    subscribe_with_acks,
)

__all__ = ["Connection", "Subscription"]

_R = TypeVar("_R", bound=p.Result)
_log = logging.getLogger("qpq_client")

_FIRST_BACKOFF_SECONDS = 0.05
_MAX_BACKOFF_SECONDS = 3.2

#: How long a plain call may take before the connection counts as failed.
CALL_TIMEOUT_SECONDS = 30.0


class CallTransport(Protocol):
    """What a :class:`Connection` sends through: a :class:`Transport`, or a fake in tests."""

    async def call(self, request: p.Request, *, answer_within: float) -> p.Response: ...

    def stream(self, request: p.Request) -> AsyncGenerator[p.Response | p.Event]: ...

    def ping(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def closed_reason(self) -> str | None: ...


class _NoServer:
    """The transport of :meth:`Connection.unreachable`: there is no server to call."""

    def __init__(self, reason: str) -> None:
        self._reason = reason

    async def call(self, request: p.Request, *, answer_within: float) -> p.Response:
        raise ConnectionFailedError(self._reason)

    async def stream(self, request: p.Request) -> AsyncGenerator[p.Response | p.Event]:
        for _ in ():
            yield _  # an async generator, as Transport.stream is
        raise ConnectionFailedError(self._reason)

    def ping(self) -> None:
        """Nothing to keep alive."""

    async def close(self) -> None:
        """Nothing to close."""

    @property
    def closed_reason(self) -> str:
        return self._reason


class Connection:
    """An open connection to a qpq server.

    Args:
        transport: the QUIC connection.
        token: the server access token ("" means none: enough for a server
            that has none).
    """

    def __init__(self, transport: CallTransport, token: str) -> None:
        self._transport = transport
        self._token = token
        self.identity_key: bytes | None = None
        #: The server's limits: :data:`qpq_proto.DEFAULT_LIMITS` with what it
        #: announced when we authenticated (its payload and message caps, how
        #: long it keeps a message queued).
        self.limits: p.Limits = p.DEFAULT_LIMITS
        #: The server takes acknowledgements on a subscribe stream (it said so).
        self.stream_acks = False

    @classmethod
    async def open(
        cls, address: ServerAddress, trust: Trust, token: str, *, connect_timeout: float = 5.0
    ) -> Connection:
        """Connect to ``address``, checking the server certificate against ``trust``."""
        transport = await Transport.open(
            address.host,
            address.port,
            alpn=p.ALPN,
            ca_pem=trust.ca_pem,
            pin=trust.pin,
            connect_timeout=connect_timeout,
        )
        return cls(transport, token)

    @classmethod
    def unreachable(cls, reason: str) -> Connection:
        """A connection to a server that could not be reached: every call raises
        ``ConnectionFailedError(reason)``, and :attr:`lost` is True.

        A client with direct delivery on works on with it while the server
        is away (members reached directly, the rest waiting in the outbox),
        and replaces it once the server answers again.
        """
        return cls(_NoServer(reason), "")

    async def close(self) -> None:
        """Close the connection."""
        await self._transport.close()

    @property
    def closed_reason(self) -> str | None:
        """Why the connection ended (None while it is open)."""
        return self._transport.closed_reason

    @property
    def lost(self) -> bool:
        """True once the connection to the server ended."""
        return self._transport.closed_reason is not None

    def _request(self, call: p.Call) -> p.Request:
        reason = self._transport.closed_reason
        if reason is not None:
            # Gone (or never there): that, not a missing proof, is what to say.
            raise ConnectionFailedError(reason)
        access = p.ACCESS[type(call)]
        if access is p.Access.IDENTITY and self.identity_key is None:
            raise UnauthenticatedError(
                f"{type(call).__name__} needs a proven identity: authenticate first"
            )
        return p.Request(call, token=self._token)

    async def _call(self, call: p.Call, expected: type[_R], *, wait_s: float = 0.0) -> _R:
        request = self._request(call)
        delay = _FIRST_BACKOFF_SECONDS
        while True:
            try:
                return await call_result(
                    self._transport, request, expected, answer_within=CALL_TIMEOUT_SECONDS + wait_s
                )
            except RateLimitedError as limited:
                # The server refuses a rate-limited call before handling it, so
                # trying again later is safe; give up after a bounded wait. A
                # limit that names a field (claims of one identity's
                # KeyPackages) lasts far longer than our backoff: say so now.
                if delay > _MAX_BACKOFF_SECONDS or limited.field:
                    raise
            await asyncio.sleep(delay)
            delay *= 2

    async def authenticate(self, identity_key: bytes, sign: Callable[[bytes], bytes]) -> None:
        """Prove ``identity_key`` on this connection by signing the server's challenge."""
        challenge = await self._call(p.Challenge(), p.ChallengeNonce)
        signature = sign(p.challenge_transcript(challenge.nonce, identity_key))
        await self._call(p.Authenticate(identity_key, signature), p.Done)
        self.identity_key = identity_key
        self.limits = _announced(challenge)
        self.stream_acks = challenge.stream_acks

    async def register_user(self, username: str, invite: str = "") -> None:
        """Register ``username`` for the proven identity: its account is created
        (with ``invite``, where the server admits by invitation), or renamed."""
        await self._call(p.RegisterUser(username, invite=invite), p.Done)

    async def delete_account(self) -> None:
        """Delete the proven identity's account on the server, for good."""
        await self._call(p.DeleteAccount(), p.Done)

    async def resolve_user(self, username: str) -> bytes:
        """The identity key of ``username`` (NotFoundError if unknown)."""
        return (await self._call(p.ResolveUser(username), p.UserKey)).identity_key

    async def resolve_identity(self, identity_key: bytes) -> str:
        """The username of ``identity_key`` (NotFoundError if none)."""
        return (await self._call(p.ResolveIdentity(identity_key), p.Username)).username

    async def resolve_identities(self, identity_keys: Sequence[bytes]) -> dict[bytes, str]:
        """The usernames of those of ``identity_keys`` that have one, by key.

        One call per ``max_resolve_identities`` keys; a server that does not
        know the call yet is asked one key at a time.
        """
        found = await self.account_names(identity_keys)
        return {key: name for key, (name, _status) in found.items() if name}

    async def account_names(
        self, identity_keys: Sequence[bytes]
    ) -> dict[bytes, tuple[str, p.AccountStatus]]:
        """The username ("" if none) and account status of each of ``identity_keys``
        the server knows something of (a server that does not say statuses
        gives UNKNOWN)."""
        keys = tuple(dict.fromkeys(identity_keys))
        found: dict[bytes, tuple[str, p.AccountStatus]] = {}
        chunk = self.limits.max_resolve_identities
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            try:
                answer = await self._call(p.ResolveIdentities(part), p.Usernames)
            except UnsupportedCallError:
                return found | await self._resolve_one_by_one(keys[start:])
            if len(answer.usernames) != len(part):
                raise MalformedMessageError(
                    f"{len(answer.usernames)} usernames answered for {len(part)} keys"
                )
            statuses = answer.statuses or (p.AccountStatus.UNKNOWN,) * len(part)
            for key, name, status in zip(part, answer.usernames, statuses, strict=True):
                if name or status is not p.AccountStatus.UNKNOWN:
                    found[key] = (name, status)
        return found

    async def _resolve_one_by_one(
        self, keys: Sequence[bytes]
    ) -> dict[bytes, tuple[str, p.AccountStatus]]:
        found: dict[bytes, tuple[str, p.AccountStatus]] = {}
        for key in keys:
            with contextlib.suppress(NotFoundError):
                found[key] = (await self.resolve_identity(key), p.AccountStatus.UNKNOWN)
        return found

    async def upload_key_packages(self, packages: tuple[bytes, ...]) -> p.Fingerprints:
        """Upload single-use KeyPackages."""
        return await self._call(p.UploadKeyPackages(packages), p.Fingerprints)

    async def upload_last_resort(self, package: bytes) -> p.Fingerprint:
        """Upload (or replace) the last-resort KeyPackage."""
        return await self._call(p.UploadLastResort(package), p.Fingerprint)

    async def fetch_key_package(
        self, identity_key: bytes, suite: int = p.DEFAULT_CIPHERSUITE
    ) -> bytes:
        """Claim one KeyPackage of ``identity_key``, of ciphersuite ``suite``."""
        call = p.FetchKeyPackage(identity_key, suite)
        return (await self._call(call, p.ClaimedKeyPackage)).package

    async def count_key_packages(self) -> p.KeyPackageCount:
        """How many unclaimed KeyPackages the proven identity has."""
        return await self._call(p.CountKeyPackages(), p.KeyPackageCount)

    async def register_device(self, certificate: bytes) -> None:
        """Register the proven key as the device its certificate names."""
        await self._call(p.RegisterDevice(certificate), p.Done)

    async def list_devices(self, account_key: bytes) -> p.Devices:
        """The current devices of an account, as the server lists them (verify them)."""
        return await self._call(p.ListDevices(account_key), p.Devices)

    async def revoke_device(self, device_key: bytes) -> None:
        """Revoke another device of our account."""
        await self._call(p.RevokeDevice(device_key), p.Done)

    async def post_link(self, mailbox: bytes, username: str, payload: bytes) -> None:
        """Post a link request to ``username``'s account (a device with no account
        yet), or the answer to one (``username`` empty)."""
        await self._call(p.PostLink(mailbox, username, payload), p.Done)

    async def fetch_link(self, mailbox: bytes) -> p.LinkPayload:
        """Read a link mailbox: the request (approver) or the answer (new device)."""
        return await self._call(p.FetchLink(mailbox), p.LinkPayload)

    async def create_group(self, group_info: bytes) -> None:
        """Register a new group from its epoch-0 GroupInfo (AlreadyExistsError: id taken)."""
        await self._call(p.CreateGroup(group_info), p.Done)

    async def publish(
        self,
        group_id: bytes,
        epoch: int,
        kind: p.MessageKind,
        payload: bytes,
        *,
        welcome: bytes = b"",
        group_info: bytes = b"",
    ) -> p.Published:
        """Send a group message; the server verifies it and fans it out to the members.

        EpochConflictError when another commit took the epoch (it names that commit).
        """
        call = p.Publish(group_id, epoch, kind, payload, welcome=welcome, group_info=group_info)
        return await self._call(call, p.Published)

    async def fetch_group_info(self, group_id: bytes) -> p.GroupSnapshot:
        """The group's latest GroupInfo and ratchet tree, to rejoin it."""
        return await self._call(p.FetchGroupInfo(group_id), p.GroupSnapshot)

    async def replace_group_info(self, group_id: bytes, group_info: bytes) -> None:
        """Have the server serve our own GroupInfo of the group's current epoch.

        EpochConflictError when the group is at another epoch; ForbiddenError
        or InvalidArgumentError when it is not ours to give or not of the
        epoch's group context (docs/protocol.md, 7.1).
        """
        await self._call(p.ReplaceGroupInfo(group_id, group_info), p.Done)

    async def publish_endpoints(self, endpoints: tuple[p.Endpoint, ...]) -> None:
        """Publish where we accept direct connections (replaces what we published before)."""
        await self._call(p.PublishEndpoints(endpoints), p.Done)

    async def resolve_endpoints(self, identity_key: bytes) -> p.PeerEndpoints:
        """Where a member said it accepts direct connections, and where the server saw it."""
        return await self._call(p.ResolveEndpoints(identity_key), p.PeerEndpoints)

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

    async def health(self, *, within: float) -> None:
        """Ask the server whether it is there (a PING alone would tell only at the idle timeout).

        Raises:
            ConnectionFailedError: no answer within ``within`` seconds, or the connection was lost.
        """
        request = self._request(p.Health())
        await call_result(self._transport, request, p.HealthStatus, answer_within=within)

    def keep_alive(self) -> None:
        """A PING the server acknowledges: keeps the connection open while it
        only waits on a subscription (no call would reach the idle timeout)."""
        self._transport.ping()

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        """Open a subscribe stream: the queue's backlog, then each new message as it is queued.

        The envelopes stay queued until acknowledged (:meth:`Subscription.ack`).
        Their iterator ends when the server ends the stream without an
        error; an error event is raised as its exception. Leaving the block
        ends the stream on the server. A server that announced it
        (``ChallengeNonce.stream_acks``) takes the acknowledgements on the
        stream itself; another one an Ack call each.

        Raises:
            ServiceError: the server refused the subscription, or ended it
                with an error (``UnavailableError`` on shutdown,
                ``RateLimitedError`` when a newer subscription replaced it).
            ConnectionFailedError: the connection was lost.
        """
        if self.stream_acks and isinstance(self._transport, Transport):
            request = self._request(p.SubscribeWithAcks())
            async with subscribe_with_acks(self._transport, request) as acked:
                yield Subscription(acked.envelopes(), self, acked)
            return
        async with subscribe(self._transport, self._request(p.Subscribe())) as envelopes:
            yield Subscription(envelopes, self, None)


class Subscription:
    """One subscribe stream: the envelopes pushed on it, and their acknowledgement.

    Args:
        envelopes: what the server pushes.
        conn: the connection, which acknowledges by Ack calls when ``stream`` is None.
        stream: a SubscribeWithAcks stream, which takes the acknowledgements itself.
    """

    def __init__(
        self,
        envelopes: AsyncIterator[p.Envelope],
        conn: Connection,
        stream: AckedSubscription | None,
    ) -> None:
        self.envelopes = envelopes
        self._conn = conn
        self._stream = stream
        self._confirmed = 0

    @property
    def confirmed(self) -> int:
        """The highest seq the server confirmed deleting up to."""
        return self._confirmed if self._stream is None else self._stream.confirmed

    async def ack(self, up_to_seq: int) -> None:
        """Acknowledge every message up to ``up_to_seq`` and wait for the server's
        confirmation: written on the stream (confirmed as envelopes are read),
        or an Ack call.

        Raises:
            ConnectionFailedError: the stream or the connection is gone.
            ServiceError: the server refused the Ack call.
        """
        if self._stream is not None:
            if not await self._stream.acknowledge(up_to_seq):
                raise ConnectionFailedError("the subscription ended")
            return
        await self._conn.ack(up_to_seq)
        self._confirmed = max(self._confirmed, up_to_seq)


def _announced(challenge: p.ChallengeNonce) -> p.Limits:
    """Our default limits with what the server announced (0: not announced)."""
    announced = {
        "max_payload_bytes": challenge.max_payload_bytes,
        "max_message_bytes": challenge.max_message_bytes,
        "message_ttl_seconds": challenge.message_ttl_seconds,
    }
    try:
        return dataclasses.replace(p.DEFAULT_LIMITS, **{k: v for k, v in announced.items() if v})
    except ValueError as error:
        # Limits that contradict each other: the server's own checks refuse
        # what is over its real ones; we keep ours.
        _log.warning("the server announced limits that cannot hold (%s); using the defaults", error)
        return p.DEFAULT_LIMITS
