"""The listening adapter's bounds, through a tiny subclass on 127.0.0.1.

:class:`qpq_proto.quic.CallServerProtocol` is what the qpq server and a
client's direct-delivery listener share; each is tested in its own package.
Here a subclass of a few lines (Health proves an identity and is answered,
ResolveUser waits until its stream is stopped) checks the shared contract
over real QUIC: request-byte budgets before and after the proof, the
per-request and authenticate deadlines, connection admission through the
hub, and that a closed connection releases all it counted.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from test_quic import make_certificate

import qpq_proto as qp
from qpq_proto.quic import (
    CallServerProtocol,
    ReceiveBudget,
    ServedStream,
    ServeLimits,
    Transport,
    certificate_fingerprint,
    listen,
)

ALPN = "qpq-serve-test/1"
KIB = 1024

LIMITS = ServeLimits(
    limits=qp.DEFAULT_LIMITS,
    unproven_bytes=12 * KIB,
    proven_window=1024 * KIB,
    authenticate_timeout_seconds=10.0,
    request_timeout_seconds=0.5,
    stream_window=64 * KIB,
    proven_request_bytes=256 * KIB,
)

#: A request that declares 64 KiB (one segment of 8 KiB words) and sends 8 KiB of it.
PARTIAL = struct.pack("<II", 0, (64 * KIB) // 8) + bytes(8 * KIB)


@dataclass
class Hub:
    """Counts connections per address key, at most ``per_address`` each."""

    per_address: int = 8
    accepting: bool = True
    counts: dict[str, int] = field(default_factory=dict)
    #: Set whenever a connection ended.
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set whenever a waiting call's task started, and was cancelled.
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def admit(self, key: str) -> str | None:
        if self.counts.get(key, 0) >= self.per_address:
            return "too many connections from this address"
        self.counts[key] = self.counts.get(key, 0) + 1
        return None

    def release(self, key: str) -> None:
        self.counts[key] -= 1
        if not self.counts[key]:
            del self.counts[key]

    def move(self, old: str, new: str) -> None:
        self.release(old)
        self.counts[new] = self.counts.get(new, 0) + 1


class _Served(CallServerProtocol):
    """Health proves an identity and is answered; ResolveUser waits until cancelled."""

    def __init__(self, *args: Any, hub: Hub, **kwargs: Any) -> None:
        self._said_health = False
        self._test_hub = hub
        super().__init__(*args, hub=hub, **kwargs)

    def _identity_proven(self) -> bool:
        return self._said_health

    def _connection_ended(self) -> None:
        self._test_hub.closed.set()

    def _request_received(self, stream_id: int, stream: ServedStream, request: qp.Request) -> None:
        self._release_request(stream)
        if isinstance(request.call, qp.ResolveUser):
            stream.task = asyncio.create_task(self._wait(stream_id, stream))
            return
        self._said_health = True
        self._respond(stream_id, stream, qp.HealthStatus("ok", "t", 1, "ok"))

    async def _wait(self, stream_id: int, stream: ServedStream) -> None:
        self._test_hub.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self._test_hub.cancelled.set()
        finally:
            self._forget_when_idle(stream_id, stream)


@dataclass
class Listening:
    port: int
    pin: str
    hub: Hub
    budget: ReceiveBudget
    #: aioquic's QuicServer under the listener (its table of connection IDs).
    server: Any

    async def connect(self) -> Transport:
        return await Transport.open(
            "127.0.0.1", self.port, alpn=ALPN, pin=self.pin, connect_timeout=5
        )


@asynccontextmanager
async def listening(
    hub: Hub | None = None, limits: ServeLimits = LIMITS
) -> AsyncIterator[Listening]:
    certificate = make_certificate()
    private_key = serialization.load_pem_private_key(certificate.key_pem.encode(), None)
    shared = hub or Hub()
    budget = ReceiveBudget(64 * 1024 * KIB)

    def create_protocol(*args: Any, **kwargs: Any) -> _Served:
        return _Served(*args, hub=shared, budget=budget, limits=limits, **kwargs)

    bound = await listen(
        "127.0.0.1",
        0,
        alpn=ALPN,
        idle_timeout=60,
        certificate=x509.load_der_x509_certificate(certificate.der),
        private_key=private_key,  # type: ignore[arg-type]
        create_protocol=create_protocol,
    )
    try:
        yield Listening(
            bound.port, certificate_fingerprint(certificate.der), shared, budget, bound.server
        )
    finally:
        bound.close()


def code(answer: bytes) -> qp.ErrorCode:
    response = qp.decode_response(answer)
    assert isinstance(response, qp.ErrorResponse), response
    return response.code


async def health(transport: Transport) -> None:
    answer = await transport.call(qp.Request(qp.Health()), answer_within=5)
    assert answer == qp.HealthStatus("ok", "t", 1, "ok")


async def two_partial(transport: Transport) -> list[qp.ErrorCode]:
    answers = await asyncio.wait_for(
        asyncio.gather(
            transport.raw(PARTIAL, end_stream=False), transport.raw(PARTIAL, end_stream=False)
        ),
        10,
    )
    return sorted(code(answer) for answer in answers)


async def test_unfinished_requests_are_capped_small_until_the_proof_and_cut_off_in_time() -> None:
    async with listening() as served:
        transport = await served.connect()
        try:
            # Before the proof two 8 KiB halves do not fit in 12 KiB: one is
            # refused, the other never finishes and is cut off at its deadline.
            assert await two_partial(transport) == [
                qp.ErrorCode.PAYLOAD_TOO_LARGE,
                qp.ErrorCode.MALFORMED_REQUEST,
            ]
            # Neither is counted any more: another 8 KiB fits, and is cut off too.
            cut_off = qp.decode_response(await transport.raw(PARTIAL, end_stream=False))
            assert isinstance(cut_off, qp.ErrorResponse)
            assert cut_off.code is qp.ErrorCode.MALFORMED_REQUEST
            assert cut_off.message == "the request did not arrive in full within 0.5 s"
            await health(transport)  # proves an identity: 256 KiB from now on
            assert await two_partial(transport) == [
                qp.ErrorCode.MALFORMED_REQUEST,
                qp.ErrorCode.MALFORMED_REQUEST,
            ]
        finally:
            await transport.close()


async def test_a_reset_cancels_the_streams_task_and_a_close_releases_everything() -> None:
    waiting = qp.encode_request(qp.Request(qp.ResolveUser("alice")))
    async with listening() as served:
        transport = await served.connect()
        try:
            await health(transport)
            # A caller that stops waiting sends STOP_SENDING: the task ends.
            call = asyncio.create_task(
                transport.call(qp.Request(qp.ResolveUser("alice")), answer_within=30)
            )
            await asyncio.wait_for(served.hub.started.wait(), 10)
            call.cancel()
            await asyncio.wait_for(served.hub.cancelled.wait(), 10)
            await health(transport)  # the connection goes on
            assert served.hub.counts == {"127.0.0.1": 1}
            served.hub.started.clear()
            served.hub.cancelled.clear()
            # A call still waiting, a request still arriving: a close ends both.
            pending = asyncio.create_task(transport.raw(waiting))
            unfinished = asyncio.create_task(transport.raw(PARTIAL[:KIB], end_stream=False))
            await asyncio.wait_for(served.hub.started.wait(), 10)
        finally:
            await transport.close()
        await asyncio.wait_for(served.hub.closed.wait(), 10)
        assert served.hub.cancelled.is_set()
        await asyncio.gather(pending, unfinished, return_exceptions=True)
        assert served.hub.counts == {}
        assert served.budget.total == 0


async def test_a_connection_over_the_hubs_cap_is_closed_with_its_reason() -> None:
    async with listening(Hub(per_address=1)) as served:
        first = await served.connect()
        try:
            second = await served.connect()
            try:
                await asyncio.wait_for(second.wait_closed(), 10)
                assert second.closed_reason == "too many connections from this address"
            finally:
                await second.close()
            await health(first)
            # The refused one was never counted.
            assert served.hub.counts == {"127.0.0.1": 1}
        finally:
            await first.close()
        # `closed` is set by whichever connection ends, the refused one too
        # (its end may come first, or later, after its draining period):
        # wait for each end until none is counted.
        async with asyncio.timeout(10):
            while served.hub.counts:
                served.hub.closed.clear()
                await served.hub.closed.wait()
        # The refused one was never counted; the closed one is no longer.
        assert served.hub.counts == {}
        third = await served.connect()
        try:
            await health(third)
        finally:
            await third.close()


async def test_a_peer_that_proves_nothing_is_closed_at_the_deadline() -> None:
    short = replace(LIMITS, authenticate_timeout_seconds=0.5)
    async with listening(limits=short) as served:
        proven, idle = await served.connect(), await served.connect()
        try:
            await health(proven)
            await asyncio.wait_for(idle.wait_closed(), 10)
            assert idle.closed_reason == "no identity proven within 0.5 s"
            await health(proven)  # opened as early, but proven in time
        finally:
            await proven.close()
            await idle.close()


class _UnscannedIds(dict[bytes, Any]):
    """A listener's table of connection IDs that may be looked up, never scanned."""

    def items(self) -> Any:
        raise AssertionError("the IDs of every connection were scanned")

    def __iter__(self) -> Any:
        raise AssertionError("the IDs of every connection were scanned")


async def test_a_listener_forgets_an_ended_connection_by_its_own_ids() -> None:
    # aioquic scanned every connection's IDs each time one ended: quadratic in
    # the connections (10,000 leaving together held the loop for minutes).
    async with listening() as served:
        served.server._protocols = _UnscannedIds(served.server._protocols)
        transports = [await served.connect() for _ in range(3)]
        for transport in transports:
            await health(transport)
        assert served.hub.counts == {"127.0.0.1": 3}
        for transport in transports:
            await transport.close()
        while served.hub.counts:
            served.hub.closed.clear()
            await asyncio.wait_for(served.hub.closed.wait(), 10)
        assert dict.__len__(served.server._protocols) == 0
