"""The message path: one call each way.

A follower takes what the server pushes on its subscribe stream; a batch is
persisted in one transaction and acknowledged with one Ack; a sender known
to be current publishes without fetching first, and one refused for too old
an epoch catches up and sends again. In-process clients against a real
server; calls are counted by wrapping the client's connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from conftest import MakeClient

from qpq_client import Client, HistoryEntry, NotAMemberError, _follow, _session
from qpq_proto.errors import EpochConflictError, ForbiddenError
from qpq_server.testing import RunningServer, open_client, start_server

pytestmark = pytest.mark.slow

_COUNTED = ("fetch", "fetch_wait", "ack", "publish")


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The module's server, with room for its bursts of calls from one address.

    Every client here calls from 127.0.0.1, about 300 calls in ten seconds,
    in bursts of 30 or 50 while clients are made: the default burst of 100
    per address is used up whenever the run goes a little faster, and the
    rate limit is not what this module tests.
    """
    running = start_server(
        tmp_path_factory.mktemp("shared-server"), extra_env={"QPQ_RATE_BURST": "1000"}
    )
    try:
        yield running
    finally:
        running.stop()


@contextlib.contextmanager
def counting(client: Client) -> Iterator[Counter[str]]:
    """Count the calls ``client`` makes to the server, by method."""
    conn: Any = client._session.conn  # observation on a private attribute
    counts: Counter[str] = Counter()

    def counted(name: str) -> Any:
        real = getattr(conn, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return await real(*args, **kwargs)

        return call

    for name in _COUNTED:
        setattr(conn, name, counted(name))
    try:
        yield counts
    finally:
        for name in _COUNTED:
            delattr(conn, name)


@contextlib.contextmanager
def refusals(client: Client, kind: type[BaseException]) -> Iterator[list[BaseException]]:
    """The publishes of ``client`` the server refuses with ``kind``."""
    conn: Any = client._session.conn  # observation on a private attribute
    real_publish = conn.publish
    refused: list[BaseException] = []

    async def publish(*args: Any, **kwargs: Any) -> Any:
        try:
            return await real_publish(*args, **kwargs)
        except kind as error:
            refused.append(error)
            raise

    conn.publish = publish
    try:
        yield refused
    finally:
        del conn.publish


async def pair(make_client: MakeClient) -> tuple[Client, Client]:
    alice, bob = await make_client("alice"), await make_client("bob")
    await bob.add_contact(alice.username)
    await alice.create_group("pair")
    await alice.invite("pair", [bob.username])
    assert [e.body for e in await bob.receive(wait=10)] == [
        f"you joined (invited by {alice.username})"
    ]
    return alice, bob


@contextlib.asynccontextmanager
async def following(client: Client) -> AsyncIterator[asyncio.Queue[HistoryEntry]]:
    """Run ``client.follow()`` in a task; its entries go to the queue."""
    entries: asyncio.Queue[HistoryEntry] = asyncio.Queue()

    async def run() -> None:
        async for entry in client.follow():
            entries.put_nowait(entry)

    task = asyncio.create_task(run())
    try:
        yield entries
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def next_text(entries: asyncio.Queue[HistoryEntry]) -> str:
    async with asyncio.timeout(10):
        return (await entries.get()).body


async def _queue_drains(client: Client) -> None:
    """Return once the server holds nothing for ``client`` (the acknowledgements
    are applied after the follower shows the messages); fail after 10 s."""
    conn: Any = client._session.conn  # observation on a private attribute
    async with asyncio.timeout(10):
        while await conn.fetch(10):
            await conn.fetch_wait(1, 50)  # a bounded wait on the server, not a sleep


@pytest.mark.parametrize("stream_acks", [True, False], ids=["on-the-stream", "ack-calls"])
async def test_follow_takes_pushed_messages_without_polling(
    make_client: MakeClient, stream_acks: bool
) -> None:
    alice, bob = await pair(make_client)
    conn: Any = bob._session.conn
    assert conn.stream_acks  # the server said it takes acknowledgements on the stream
    # As a server from before SubscribeWithAcks: Subscribe, then an Ack call per batch.
    conn.stream_acks = stream_acks
    with counting(bob) as calls:
        async with following(bob) as entries:
            for body in ("one", "two", "three"):
                await alice.send("pair", body)
                assert await next_text(entries) == body
    assert calls["fetch_wait"] == 0  # the subscribe stream brought them
    if stream_acks:
        assert calls["ack"] == 0  # written on the stream: no call per batch
    else:
        assert 1 <= calls["ack"] <= 3
    assert [e.body for e in bob.history("pair")][-3:] == ["one", "two", "three"]
    await _queue_drains(bob)


async def test_a_batch_is_persisted_once_and_acknowledged_once(make_client: MakeClient) -> None:
    alice, bob = await pair(make_client)
    for index in range(5):
        await alice.send("pair", f"message {index}")
    batches = 0
    real_batch = bob._store.batch

    def batch(**options: Any) -> Any:
        nonlocal batches
        batches += 1
        return real_batch(**options)

    bob._store.batch = batch  # type: ignore[method-assign] - observation
    try:
        with counting(bob) as calls:
            entries = await bob.receive(wait=10)
    finally:
        del bob._store.batch
    assert [e.body for e in entries] == [f"message {i}" for i in range(5)]
    assert calls["ack"] == 1
    assert batches == 1


async def test_a_current_sender_publishes_without_fetching(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = await pair(make_client)
    monkeypatch.setattr(_session, "CURRENT_SECONDS", 3600.0)
    await alice.send("pair", "catches up first")
    with counting(alice) as calls:
        for index in range(3):
            await alice.send("pair", f"current {index}")
    assert calls == Counter(publish=3)
    assert [e.body for e in await bob.receive(wait=10)] == [
        "catches up first",
        *(f"current {i}" for i in range(3)),
    ]


async def test_a_message_for_an_epoch_the_server_no_longer_takes_is_sent_again(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = await pair(make_client)
    monkeypatch.setattr(_session, "CURRENT_SECONDS", 3600.0)
    await alice.send("pair", "before")
    # Four epochs on: past the three before the current one that the server
    # still takes application messages for.
    for _ in range(4):
        await bob.update("pair")
    with refusals(alice, EpochConflictError) as refused:
        await alice.send("pair", "after")
    assert len(refused) == 1
    assert [e.body for e in await bob.receive(wait=10)] == ["before", "after"]
    assert [e.body for e in alice.history("pair") if e.kind == "text"] == ["before", "after"]
    assert alice._store.outbox() == []
    assert alice.groups()[0].epoch == bob.groups()[0].epoch


async def test_a_sender_removed_meanwhile_fails_as_after_catching_up(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = await pair(make_client)
    monkeypatch.setattr(_session, "CURRENT_SECONDS", 3600.0)
    await bob.send("pair", "hello")
    await alice.remove("pair", [bob.username])
    with (
        refusals(bob, ForbiddenError) as forbidden,
        pytest.raises(NotAMemberError, match="no longer a member"),
    ):
        await bob.send("pair", "still here?")
    assert len(forbidden) == 1  # it went out without catching up, and was refused
    assert "still here?" not in [e.body for e in bob.history("pair")]
    assert bob._store.outbox() == []
    assert bob.groups()[0].status == "removed"


async def test_concurrent_sends_of_one_client_are_each_published_once(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = await pair(make_client)
    # Every send catches up, and so finishes the outbox, while others are in flight.
    monkeypatch.setattr(_session, "CURRENT_SECONDS", 0.0)
    bodies = [f"in flight {i}" for i in range(10)]
    with counting(alice) as calls:
        await asyncio.gather(*(alice.send("pair", body) for body in bodies))
    assert calls["publish"] == len(bodies)
    assert alice._store.outbox() == []
    received = await bob.receive(wait=10)
    assert sorted(e.body for e in received) == sorted(bodies)
    assert {e.kind for e in received} == {"text"}


async def test_a_follower_whose_stream_is_replaced_keeps_following(
    make_client: MakeClient, shared_server: RunningServer
) -> None:
    alice, bob = await pair(make_client)
    async with following(bob) as entries:
        await alice.send("pair", "first")
        assert await next_text(entries) == "first"
        async with contextlib.AsyncExitStack() as others:
            # Streams of bob's identity up to the server's cap: his follower's
            # own stream, the oldest, is ended with rateLimited.
            for _ in range(4):
                client = await others.enter_async_context(
                    open_client(
                        shared_server.host,
                        shared_server.port,
                        token=shared_server.token,
                        pin=shared_server.fingerprint,
                    )
                )
                await client.authenticate(bob._identity)
                await others.enter_async_context(client.subscribe())
            await alice.send("pair", "second")
            assert await next_text(entries) == "second"
        await alice.send("pair", "third")
        assert await next_text(entries) == "third"


async def test_an_idle_follower_pings_the_server_and_keeps_following(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = await pair(make_client)
    monkeypatch.setattr(_follow, "_KEEPALIVE_SECONDS", 0.05)
    conn: Any = bob._session.conn  # observation on a private attribute
    real_keep_alive = conn.keep_alive
    pinged = asyncio.Event()
    pings = 0

    def keep_alive() -> None:
        nonlocal pings
        pings += 1
        if pings == 3:
            pinged.set()
        real_keep_alive()

    conn.keep_alive = keep_alive
    try:
        async with following(bob) as entries:
            async with asyncio.timeout(10):
                await pinged.wait()  # three rounds with nothing to receive
            await alice.send("pair", "after a quiet while")
            assert await next_text(entries) == "after a quiet while"
    finally:
        del conn.keep_alive
    assert not conn.lost
