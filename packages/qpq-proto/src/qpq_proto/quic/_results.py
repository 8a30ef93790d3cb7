"""A call's result or its coded error, and a subscribe stream's envelopes.

Every caller of the project (the qpq-client library, the server's health
check and test harness, a dialing peer) reads answers the same way, here:
an ``ErrorResponse`` becomes the :class:`~qpq_proto.errors.ServiceError` of
its code, raised; anything but the awaited result is a protocol violation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol, TypeVar

from qpq_proto._messages import (
    Acked,
    Envelope,
    ErrorResponse,
    Event,
    Request,
    Response,
    Result,
    Subscribe,
    Subscribed,
    SubscribeWithAcks,
)
from qpq_proto.errors import LocalProtocolError, MalformedMessageError
from qpq_proto.quic._transport import AckingStream, Transport

__all__ = ["AckedSubscription", "Caller", "call_result", "subscribe", "subscribe_with_acks"]

_R = TypeVar("_R", bound=Result)


class Caller(Protocol):
    """What answers are read from: a :class:`~qpq_proto.quic.Transport`, or a
    test's stand-in with the same two methods."""

    async def call(self, request: Request, *, answer_within: float) -> Response:
        """Send one request; return its answer."""
        ...

    def stream(self, request: Request) -> AsyncGenerator[Response | Event]:
        """Send a streaming request; yield its answer, then each event."""
        ...


async def call_result(
    caller: Caller, request: Request, expected: type[_R], *, answer_within: float
) -> _R:
    """Send ``request``; return its result, or raise the coded error answered.

    Raises:
        ServiceError: the peer answered an ``ErrorResponse``; the subclass of
            its code (:meth:`ErrorResponse.to_exception`).
        MalformedMessageError: the answer is not an ``expected``.
        ConnectionFailedError: as :meth:`Transport.call` (lost, or no answer
            within ``answer_within`` seconds).
        RemoteProtocolError: the peer broke the protocol on the stream.
    """
    response = await caller.call(request, answer_within=answer_within)
    if isinstance(response, ErrorResponse):
        raise response.to_exception()
    if not isinstance(response, expected):
        # ClientCall already refuses a result of another call; this also
        # holds a test's stand-in to it, and narrows the type.
        raise MalformedMessageError(
            f"{type(response).__name__} does not answer {type(request.call).__name__}"
        )
    return response


@contextlib.asynccontextmanager
async def subscribe(caller: Caller, request: Request) -> AsyncIterator[AsyncIterator[Envelope]]:
    """Open a subscribe stream; yield an iterator of the envelopes pushed on it.

    The iterator ends when the peer ends the stream without an error; an
    error event is raised as its exception. Leaving the block resets the
    stream if it is still open, which ends it on the peer.

    Raises:
        ServiceError: the subscription was refused, or (from the iterator)
            ended with a coded error event.
        MalformedMessageError: the peer answered or pushed something else.
        ConnectionFailedError: the connection was lost.
        LocalProtocolError: ``request`` is no Subscribe.
    """
    if not isinstance(request.call, Subscribe):
        raise LocalProtocolError(f"{type(request.call).__name__} opens no subscribe stream")
    stream = caller.stream(request)
    try:
        _check_subscribed(await anext(stream))

        async def envelopes() -> AsyncIterator[Envelope]:
            async for event in stream:
                yield _envelope(event)

        yield envelopes()
    finally:
        await stream.aclose()


class AckedSubscription:
    """A SubscribeWithAcks stream: the envelopes pushed on it, and the
    acknowledgements written on it (docs/protocol.md §2).

    :attr:`confirmed` is the highest seq the server confirmed it deleted up
    to (an ``Acked`` event); it is read as the envelopes are.
    """

    def __init__(self, stream: AckingStream) -> None:
        self._stream = stream
        self.confirmed = 0
        self._confirmations = 0
        self._over = False
        self._confirmation = asyncio.Event()

    async def envelopes(self) -> AsyncIterator[Envelope]:
        """Each envelope pushed, until the server ends the stream; an error event is raised."""
        try:
            async for event in self._stream:
                if isinstance(event, Acked):
                    self.confirmed = max(self.confirmed, event.up_to_seq)
                    self._confirmations += 1
                    self._confirmation.set()
                    continue
                yield _envelope(event)
        finally:
            self._over = True
            self._confirmation.set()

    async def acknowledge(self, up_to_seq: int) -> bool:
        """Acknowledge every message up to ``up_to_seq`` and wait for the
        server's confirmation, read with the envelopes (so that one is in
        flight at a time, and those due meanwhile share the next). Call it
        once at a time: the next confirmation is this one's, whatever it
        covered. False when the stream ended first."""
        answered = self._confirmations
        if not self._stream.ack(up_to_seq):
            return False
        while self._confirmations == answered:
            if self._over:
                return False
            self._confirmation.clear()
            await self._confirmation.wait()
        return True


@contextlib.asynccontextmanager
async def subscribe_with_acks(
    transport: Transport, request: Request
) -> AsyncIterator[AckedSubscription]:
    """Open a SubscribeWithAcks stream; yield it as an :class:`AckedSubscription`.

    Leaving the block ends our side of the stream (or resets it if the
    server had not ended its own), which ends the subscription on the server.

    Raises:
        ServiceError: the subscription was refused, or (from the iterator)
            ended with a coded error event.
        MalformedMessageError: the peer answered or pushed something else.
        ConnectionFailedError: the connection was lost.
        LocalProtocolError: ``request`` is no SubscribeWithAcks.
    """
    if not isinstance(request.call, SubscribeWithAcks):
        raise LocalProtocolError(f"{type(request.call).__name__} opens no acknowledged stream")
    stream = transport.open_acking(request)
    try:
        _check_subscribed(await anext(stream))
        yield AckedSubscription(stream)
    finally:
        await stream.aclose()


def _check_subscribed(first: Response | Event) -> None:
    """Raise unless a subscription's first answer is ``subscribed``."""
    if isinstance(first, ErrorResponse):
        raise first.to_exception()
    if not isinstance(first, Subscribed):
        raise MalformedMessageError(f"{type(first).__name__} does not answer Subscribe")


def _envelope(event: Response | Event) -> Envelope:
    """An event of a subscribe stream as the envelope it must be; an error event raised."""
    if isinstance(event, ErrorResponse):
        raise event.to_exception()
    if not isinstance(event, Envelope):
        raise MalformedMessageError(f"{type(event).__name__} on a subscribe stream")
    return event
