"""Direct delivery (qpq-p2p) beside the server path: latency and messages per second.

Prints a table of values measured in one run; it asserts nothing and is not
a test. Run it through tox::

    tox -e bench-p2p                   # 500 messages per measurement
    tox -e bench-p2p -- --quick        # 60, a smoke run

Both paths carry the same MLS application messages (alice's, about 100
bytes of text) from alice to bob, who is in a group with her that a real
``qpq-server run`` subprocess verified, and both end when bob's host has
processed the message with MLS (and, direct, only then acknowledged it):

- direct: ``PeerNode.send`` over a proven peer connection on 127.0.0.1;
- server: ``Publish`` on alice's server connection, pushed to bob's
  subscribe stream (acknowledged in one ``Ack`` at the end).

Sequential: one message at a time, latency per message (send until bob
processed it). In flight: ``--in-flight`` messages at once (below MLS's
out-of-order tolerance of 32), messages per second until bob has them all.
Both peers run in this process; the server in its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import qpq_core
from qpq_p2p import DirectMessage, PeerConfig, PeerNode
from qpq_proto import (
    Ack,
    CreateGroup,
    Endpoint,
    Envelope,
    Fetch,
    MessageKind,
    PeerEndpoints,
    Publish,
    PublishEndpoints,
    ResolveEndpoints,
)
from qpq_server.testing import CallClient, RunningServer, ServerProcess

SERVER_ENV = {"QPQ_RATE_PER_SECOND": "1000000", "QPQ_RATE_BURST": "1000000"}
CONFIG = PeerConfig(listen_host="127.0.0.1")


class Receiver:
    """Bob's host: processes each message with MLS and counts it."""

    def __init__(self, mls: qpq_core.MlsClient) -> None:
        self.mls = mls
        self.processed = 0
        self._waiters: dict[int, asyncio.Event] = {}

    def process(self, payload: bytes) -> None:
        self.mls.process(payload)
        self.processed += 1
        waiter = self._waiters.pop(self.processed, None)
        if waiter is not None:
            waiter.set()

    async def direct(self, message: DirectMessage) -> None:
        self.process(message.payload)

    async def until(self, count: int) -> None:
        """Return once ``count`` messages were processed in all."""
        if self.processed >= count:
            return
        await self._waiters.setdefault(count, asyncio.Event()).wait()


@dataclass
class Pair:
    """Alice and Bob: identities, MLS states, server connections, their group."""

    alice_id: qpq_core.Identity
    bob_id: qpq_core.Identity
    alice: qpq_core.MlsClient
    bob: qpq_core.MlsClient
    alice_srv: CallClient
    bob_srv: CallClient
    group_id: bytes


class Rendezvous:
    """A server connection as a node attaches to it."""

    def __init__(self, client: CallClient) -> None:
        self.client = client

    async def publish_endpoints(self, endpoints: tuple[Endpoint, ...]) -> None:
        await self.client.call(PublishEndpoints(endpoints=endpoints))

    async def resolve_endpoints(self, identity_key: bytes) -> PeerEndpoints:
        found: PeerEndpoints = await self.client.call(ResolveEndpoints(identity_key=identity_key))
        return found


@contextlib.asynccontextmanager
async def pair(server: RunningServer) -> AsyncIterator[Pair]:
    """Alice and Bob, connected and authenticated, in a group the server verified."""
    alice_id, bob_id = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    alice, bob = qpq_core.MlsClient(alice_id), qpq_core.MlsClient(bob_id)
    async with server.connect() as alice_srv, server.connect() as bob_srv:
        await alice_srv.authenticate(alice_id)
        await bob_srv.authenticate(bob_id)
        created = alice.create_group()
        group_id = created.group_id
        await alice_srv.call(CreateGroup(group_info=created.group_info))
        bundle = alice.add_members(group_id, [bob.create_key_packages(1).packages[0]])
        await alice_srv.call(
            Publish(
                group_id,
                bundle.epoch,
                MessageKind.COMMIT,
                bundle.commit,
                welcome=bundle.welcome or b"",
                group_info=bundle.group_info,
            )
        )
        alice.merge_pending_commit(group_id)
        (welcome,) = (await bob_srv.call(Fetch(limit=1))).messages
        bob.join_from_welcome(welcome.payload)
        await bob_srv.call(Ack(up_to_seq=welcome.seq))
        yield Pair(alice_id, bob_id, alice, bob, alice_srv, bob_srv, group_id)


async def measure(
    send: Callable[[bytes], Awaitable[object]],
    receiver: Receiver,
    messages: list[bytes],
    in_flight: int,
) -> tuple[list[float], float]:
    """(latencies of a sequential half, messages/s of an in-flight half)."""
    half = len(messages) // 2
    latencies = []
    for message in messages[:half]:
        target = receiver.processed + 1
        started = time.perf_counter()
        await send(message)
        await receiver.until(target)
        latencies.append(time.perf_counter() - started)
    target = receiver.processed + (len(messages) - half)
    semaphore = asyncio.Semaphore(in_flight)

    async def one(message: bytes) -> None:
        async with semaphore:
            await send(message)

    started = time.perf_counter()
    # Encrypted in order; sent at most in_flight apart.
    await asyncio.gather(*(one(m) for m in messages[half:]))
    await receiver.until(target)
    return latencies, (len(messages) - half) / (time.perf_counter() - started)


async def subscribe(client: CallClient, receiver: Receiver, ready: asyncio.Event) -> None:
    async with client.subscribe() as events:
        ready.set()
        async for event in events:
            if isinstance(event, Envelope):
                receiver.process(event.payload)


async def run(count: int, in_flight: int) -> None:
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(Path(tmp), extra_env=SERVER_ENV) as server,
    ):
        async with pair(server) as p:
            receiver = Receiver(p.bob)

            def batch() -> list[bytes]:
                return [p.alice.encrypt(p.group_id, b"x" * 100).message for _ in range(count)]

            async def never() -> None:
                raise RuntimeError("a direct send fell back to the server")

            async def alice_receives_nothing(_message: DirectMessage) -> None:
                raise RuntimeError("only Bob receives in this benchmark")

            async with (
                PeerNode(p.bob_id, p.bob, receiver.direct, CONFIG) as bob_node,
                PeerNode(p.alice_id, p.alice, alice_receives_nothing, CONFIG) as alice_node,
            ):
                await bob_node.attach_server(Rendezvous(p.bob_srv))
                await alice_node.attach_server(Rendezvous(p.alice_srv))
                await alice_node.probe()  # connect and prove once, as a running client would

                async def direct(message: bytes) -> None:
                    await alice_node.send(message, via_server=never)

                latencies, rate = await measure(direct, receiver, batch(), in_flight)
                rows.append(("direct (qpq-p2p/1)", latencies, rate))

            ready = asyncio.Event()
            pushed = asyncio.create_task(subscribe(p.bob_srv, receiver, ready))
            await ready.wait()
            epoch = p.alice.epoch(p.group_id)

            async def through_server(message: bytes) -> None:
                await p.alice_srv.call(Publish(p.group_id, epoch, MessageKind.APPLICATION, message))

            latencies, rate = await measure(through_server, receiver, batch(), in_flight)
            rows.append(("through qpq-server", latencies, rate))
            pushed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pushed
            queued = (await p.bob_srv.call(Fetch(limit=1000))).messages
            if queued:
                await p.bob_srv.call(Ack(up_to_seq=queued[-1].seq))
    _print(rows, count, in_flight)


def _print(rows: list[tuple[str, list[float], float]], count: int, in_flight: int) -> None:
    half = count // 2
    print("\nqpq-p2p beside qpq-server, 127.0.0.1, ~100-byte MLS application messages")
    print(f"sequential: {half} messages; in flight: {count - half} messages, {in_flight} at once\n")
    header = f"{'path':<22}{'median ms':>11}{'p95 ms':>9}{'seq msg/s':>11}{'in-flight msg/s':>17}"
    print(header)
    print("-" * len(header))
    for name, latencies, rate in rows:
        median = statistics.median(latencies) * 1000
        p95 = statistics.quantiles(latencies, n=20)[-1] * 1000
        sequential = len(latencies) / sum(latencies)
        print(f"{name:<22}{median:>11.2f}{p95:>9.2f}{sequential:>11.0f}{rate:>17.0f}")
    print("\nlatency: send until the receiver's host processed the message (MLS included).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages", type=int, default=500, help="per path (half of them sequential)"
    )
    parser.add_argument("--in-flight", type=int, default=16, help="concurrent sends (at most 32)")
    parser.add_argument("--quick", action="store_true", help="60 messages: a smoke run")
    args = parser.parse_args()
    count = 60 if args.quick else args.messages
    asyncio.run(run(count, min(args.in_flight, 32)))


if __name__ == "__main__":
    main()
