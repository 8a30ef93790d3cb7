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
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import qpq_core
from qpq_p2p import DirectMessage, PeerConfig, PeerNode
from qpq_proto import Ack, Envelope, Fetch
from qpq_server.testing import CallClient, ServerProcess

# The tests' helpers build the group through the server, as here.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from p2p_helpers import group_on_server

#: Registration is open (development's default) and no limit trips: the
#: per-account ones (messages per hour) are lifted like the rate limit.
SERVER_ENV = {
    "QPQ_RATE_PER_SECOND": "1000000",
    "QPQ_RATE_BURST": "1000000",
    "QPQ_ACCOUNT_MESSAGES_PER_HOUR": "1000000000",
}
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
        async with group_on_server(server, 2) as ((alice, bob), group_id, (alice_srv, bob_srv)):
            receiver = Receiver(bob.mls)

            def batch() -> list[bytes]:
                return [alice.mls.encrypt(group_id, b"x" * 100).message for _ in range(count)]

            async def never() -> None:
                raise RuntimeError("a direct send fell back to the server")

            async def alice_receives_nothing(_message: DirectMessage) -> None:
                raise RuntimeError("only Bob receives in this benchmark")

            async with (
                PeerNode(bob.identity, bob.mls, receiver.direct, CONFIG) as bob_node,
                PeerNode(alice.identity, alice.mls, alice_receives_nothing, CONFIG) as alice_node,
            ):
                await bob_node.attach_server(bob_srv)
                await alice_node.attach_server(alice_srv)
                await alice_node.probe()  # connect and prove once, as a running client would

                async def direct(message: bytes) -> None:
                    await alice_node.send(message, via_server=never)

                latencies, rate = await measure(direct, receiver, batch(), in_flight)
                rows.append(("direct (qpq-p2p/1)", latencies, rate))

            ready = asyncio.Event()
            pushed = asyncio.create_task(subscribe(bob_srv.client, receiver, ready))
            await ready.wait()
            epoch = alice.mls.epoch(group_id)

            async def through_server(message: bytes) -> None:
                await alice_srv.via_server(group_id, epoch, message)()

            latencies, rate = await measure(through_server, receiver, batch(), in_flight)
            rows.append(("through qpq-server", latencies, rate))
            pushed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pushed
            queued = (await bob_srv.client.call(Fetch(limit=1000))).messages
            if queued:
                await bob_srv.client.call(Ack(up_to_seq=queued[-1].seq))
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
