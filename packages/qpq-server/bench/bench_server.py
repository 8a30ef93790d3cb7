"""qpq-server throughput and latency beside raw aioquic, SQLCipher beside SQLite, PostgreSQL nodes.

Prints a table of values measured in one run; it asserts nothing and is not a
test. Run it through tox::

    tox -e bench-server                  # full run, about 2-3 minutes
    tox -e bench-server -- --quick       # smoke run, a few seconds per section

What it measures (all traffic on 127.0.0.1):

1. Small calls per second on one connection, sequential and 100 in flight,
   against a real ``qpq-server run`` subprocess, beside a minimal aioquic echo
   server (another subprocess, same certificate, ALPN and flow-control
   windows) driven with the same pattern: one new bidirectional stream per
   call, request and FIN, answer and FIN. The raw echo gets the encoded qpq
   request as its payload, so both move the same bytes upstream.
2. 1 MiB Publish throughput (an MLS application message to a group of two)
   beside a 1 MiB raw echo (the baseline the target names) and beside a raw
   1 MiB upload answered with 8 bytes (same traffic shape as a Publish).
3. Publish -> subscriber delivery latency under a paced, steady load, each
   sender in a group of two with its subscriber.
4. Server RSS per connection with a FetchWait long-poll pending on each.
5. The SQLCipher store beside the same store on plain SQLite (empty db_key),
   in process: publish (a group's fan-out) + fetch + ack cycles per second.
6. Messages/s and recipients/s of publishes to groups of ten, through real
   servers: one node on SQLCipher, one node on PostgreSQL, two nodes on one
   PostgreSQL database (publishers split between them). PostgreSQL is a
   throwaway cluster with its default durability (an fsync per COMMIT), as
   SQLCipher's ``synchronous=FULL``; everything shares this machine's cores.

Messages are real MLS messages made with qpq-core before the clock starts
(the server checks their framing and the sender's membership, never their
content), so the client's encryption is not part of what is measured.

qpq/raw pairs run in alternating rounds and report the median round, which
evens out drift on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import math
import os
import platform
import resource
import signal
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The baseline is raw aioquic itself, imported here (the server takes it
# through qpq_proto.quic and imports only what it adds).
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived, StreamReset

# Every benchmark measures with the repository's one measuring module
# (bench/_measure.py) and one raw echo (bench/_echo.py). Run as a script, the
# repository root is not on the path yet.
_ROOT = Path(__file__).resolve().parents[3]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import qpq_core  # noqa: E402
from bench._echo import (  # noqa: E402
    CONNECTION_WINDOW,
    SINK_MARKER,
    STREAM_WINDOW,
    EchoStreams,
    PendingRequests,
    announce,
    serving_process,
)
from bench._measure import cpu_seconds, percentile, rss_kib, settle  # noqa: E402
from qpq_proto import (  # noqa: E402
    ALPN,
    DEFAULT_LIMITS,
    Ack,
    CreateGroup,
    Fetch,
    FetchKeyPackage,
    FetchWait,
    Health,
    MessageKind,
    Messages,
    Publish,
    Published,
    Request,
    UploadKeyPackages,
    encode_request,
)
from qpq_server._sqlcipher import SqlCipherStorage  # noqa: E402
from qpq_server._storage import Delivery  # noqa: E402
from qpq_server.testing import (  # noqa: E402
    TEST_DB_KEY,
    CallClient,
    PostgresCluster,
    RunningServer,
    start_server,
)

MIB = 1024 * 1024
#: The rate limiter stays in the path but never trips; logs stay at the default level.
#: The connections section opens all its connections from 127.0.0.1, so the
#: per-address connection cap is lifted above its count.
SERVER_ENV = {
    "QPQ_RATE_PER_SECOND": "1000000000",
    "QPQ_RATE_BURST": "1000000000",
    "QPQ_MAX_CONNECTIONS_PER_ADDRESS": "100000",
    # Registration is open (development's default); the per-account limits
    # are lifted like the rate limit: one sender publishes far more than an
    # hour's worth.
    "QPQ_ACCOUNT_MESSAGES_PER_HOUR": "1000000000",
    "QPQ_INVITATIONS_TO_STRANGERS_PER_DAY": "1000000",
    "QPQ_KEY_PACKAGE_CLAIMS_PER_ACCOUNT_PER_DAY": "1000000",
}
Call = Callable[[], Awaitable[object]]


# ---- settings ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """How long and how much each section runs."""

    rounds: int
    round_seconds: float
    max_ops_per_round: int
    in_flight: int
    bulk_round_seconds: float
    latency_rate: int
    light_rate: int
    latency_seconds: float
    latency_warmup: float
    latency_peers: int
    connections: int
    connections_budget: float
    store_round_seconds: float

    @classmethod
    def full(cls) -> Settings:
        return cls(
            rounds=3,
            round_seconds=1.0,
            max_ops_per_round=50_000,
            in_flight=100,
            bulk_round_seconds=2.0,
            latency_rate=1000,
            light_rate=200,
            latency_seconds=5.0,
            latency_warmup=0.5,
            latency_peers=4,
            connections=1000,
            connections_budget=60.0,
            store_round_seconds=1.0,
        )

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            rounds=1,
            round_seconds=0.3,
            max_ops_per_round=5_000,
            in_flight=100,
            bulk_round_seconds=0.5,
            latency_rate=1000,
            light_rate=200,
            latency_seconds=1.0,
            latency_warmup=0.2,
            latency_peers=2,
            connections=50,
            connections_budget=20.0,
            store_round_seconds=0.3,
        )


@dataclass(slots=True)
class Row:
    """One line of the result table."""

    name: str
    unit: str
    value: float
    baseline: float | None = None
    baseline_label: str = ""
    target: float | None = None  # minimum ratio value/baseline
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline


# ---- timing helpers -----------------------------------------------------------


async def sequential_rate(call: Call, seconds: float, max_ops: int) -> float:
    """Calls per second, one after another, for ``seconds`` or ``max_ops`` calls."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while count < max_ops and time.perf_counter() < deadline:
        await call()
        count += 1
    return count / (time.perf_counter() - start)


async def concurrent_rate(call: Call, width: int, seconds: float, max_ops: int) -> float:
    """Calls per second with ``width`` calls in flight at all times."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        nonlocal count
        while count < max_ops and time.perf_counter() < deadline:
            await call()
            count += 1

    await asyncio.gather(*(worker() for _ in range(width)))
    return count / (time.perf_counter() - start)


async def paired(
    measure_qpq: Callable[[], Awaitable[float]],
    measure_raw: Callable[[], Awaitable[float]],
    rounds: int,
    between: Callable[[], Awaitable[object]] | None = None,
) -> tuple[float, float]:
    """Median of alternating qpq/raw rounds (the order flips every round)."""
    qpq: list[float] = []
    raw: list[float] = []
    for index in range(rounds):
        order = [(measure_qpq, qpq), (measure_raw, raw)]
        if index % 2:
            order.reverse()
        for measure, out in order:
            out.append(await measure())
            if between is not None:
                await between()
    return statistics.median(qpq), statistics.median(raw)


def with_cpu(
    pid: int, measure: Callable[[], Awaitable[float]], sink: list[float]
) -> Callable[[], Awaitable[float]]:
    """``measure``, also appending the CPU milliseconds process ``pid`` spent per call."""

    async def run() -> float:
        spent, started = cpu_seconds(pid), time.perf_counter()
        rate = await measure()
        calls = rate * (time.perf_counter() - started)
        sink.append((cpu_seconds(pid) - spent) * 1000 / max(calls, 1))
        return rate

    return run


# ---- the raw aioquic echo (bench/_echo.py) over aioquic ----------------------------


def quic_windows() -> dict[str, Any]:
    """The flow-control windows qpq-server and its test client use."""
    return {"max_stream_data": STREAM_WINDOW, "max_data": CONNECTION_WINDOW}


class EchoServerProtocol(QuicConnectionProtocol):
    """The echo (:class:`bench._echo.EchoStreams`) over aioquic."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._streams = EchoStreams()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            reply = self._streams.received(event.stream_id, event.data, event.end_stream)
            if reply is not None:
                self._quic.send_stream_data(event.stream_id, reply, end_stream=True)
                self.transmit()
        elif isinstance(event, StreamReset):
            self._streams.reset(event.stream_id)


async def serve_echo(cert: Path, key: Path, ready_file: Path) -> None:
    """The echo server process: bind 127.0.0.1:0, announce the port, serve until SIGTERM."""
    configuration = QuicConfiguration(
        is_client=False, alpn_protocols=[ALPN], idle_timeout=120.0, **quic_windows()
    )
    configuration.load_cert_chain(str(cert), str(key))
    loop = asyncio.get_running_loop()
    transport, _server = await loop.create_datagram_endpoint(
        lambda: QuicServer(configuration=configuration, create_protocol=EchoServerProtocol),
        local_addr=("127.0.0.1", 0),
    )
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    announce(ready_file, int(transport.get_extra_info("sockname")[1]))
    await stop.wait()
    transport.close()


class RawClientProtocol(QuicConnectionProtocol):
    """One new stream per request: write it with FIN, collect the answer until FIN."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending = PendingRequests()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._pending.received(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, ConnectionTerminated):
            self._pending.lost(event.reason_phrase)

    async def request(self, data: bytes) -> bytes:
        stream_id = self._quic.get_next_available_stream_id()
        answer = self._pending.open(stream_id)
        self._quic.send_stream_data(stream_id, data, end_stream=True)
        self.transmit()
        return await answer


@contextlib.asynccontextmanager
async def raw_client(port: int) -> Any:
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        server_name="127.0.0.1",
        idle_timeout=120.0,
        **quic_windows(),
    )
    configuration.verify_mode = ssl.CERT_NONE
    async with connect(
        "127.0.0.1", port, configuration=configuration, create_protocol=RawClientProtocol
    ) as protocol:
        if not isinstance(protocol, RawClientProtocol):
            raise TypeError("unexpected protocol class")
        yield protocol


def echo_server_process(
    server: RunningServer, workdir: Path
) -> contextlib.AbstractContextManager[tuple[int, int]]:
    """Run the echo server as its own process (as qpq-server is); yield its port and pid."""
    ready = workdir / "echo-ready.json"
    key = server.data_dir / "server-key.pem"
    script = str(Path(__file__).resolve())
    argv = [sys.executable, script, "--echo-server", str(server.cert_path), str(key), str(ready)]
    return serving_process(argv, ready, "raw echo server")


# ---- groups: where published messages go ----------------------------------------

#: Acknowledges a whole queue (the server caps it at its largest seq).
ACK_ALL = 2**64 - 1


async def new_group(
    server: RunningServer,
    owner: qpq_core.MlsClient,
    joiners: list[qpq_core.MlsClient],
    owner_client: CallClient,
) -> bytes:
    """A group of ``owner`` and ``joiners`` as a client builds it: CreateGroup, the
    joiners' KeyPackages claimed from the directory, one add commit with its
    Welcome. The joiners never decrypt here, so they need not join; their
    queues are emptied."""
    created = owner.create_group()
    await owner_client.call(CreateGroup(group_info=created.group_info))
    packages = []
    for joiner in joiners:
        async with server.connect() as client:
            await client.authenticate(joiner.identity)
            await client.call(UploadKeyPackages(packages=joiner.create_key_packages(1).packages))
        claimed = await owner_client.call(FetchKeyPackage(identity_key=joiner.identity.public_key))
        packages.append(claimed.package)
    if packages:
        await owner_client.call(commit_call(owner.add_members(created.group_id, packages)))
        owner.merge_pending_commit(created.group_id)
        for joiner in joiners:
            async with server.connect() as client:
                await client.authenticate(joiner.identity)
                await client.call(Ack(up_to_seq=ACK_ALL))
    return created.group_id


def commit_call(bundle: qpq_core.CommitBundle) -> Publish:
    """The Publish of a commit, with its GroupInfo and, if it adds, its Welcome."""
    return Publish(
        bundle.group_id,
        bundle.epoch,
        MessageKind.COMMIT,
        bundle.commit,
        welcome=bundle.welcome or b"",
        group_info=bundle.group_info,
    )


def application(sender: qpq_core.MlsClient, group_id: bytes, plaintext: bytes) -> Publish:
    """A Publish of an MLS application message, encrypted now."""
    message = sender.encrypt(group_id, plaintext).message
    return Publish(group_id, sender.epoch(group_id), MessageKind.APPLICATION, message)


def sized(sender: qpq_core.MlsClient, group_id: bytes, size: int) -> Publish:
    """An application message whose MLS ciphertext is ``size`` bytes."""
    overhead = len(sender.encrypt(group_id, bytes(100_000)).message) - 100_000
    return application(sender, group_id, os.urandom(size - overhead))


# ---- 1 and 2: calls per second, 1 MiB throughput --------------------------------


async def bench_calls(
    server: RunningServer,
    echo_port: int,
    echo_pid: int,
    settings: Settings,
    identity: qpq_core.Identity,
) -> list[Row]:
    rows: list[Row] = []
    s = settings
    async with server.connect() as client, raw_client(echo_port) as raw:
        await client.authenticate(identity)
        cases: list[tuple[str, Any]] = [("Health", Health()), ("Fetch(limit=1)", Fetch(limit=1))]
        for label, call in cases:
            request = encode_request(Request(call=call, token=server.token))

            async def qpq_call(call: Any = call) -> object:
                return await client.call(call)

            async def raw_call(request: bytes = request) -> object:
                return await raw.request(request)

            for _ in range(50):  # warm up both paths
                await qpq_call()
                await raw_call()

            def seq(fn: Call) -> Callable[[], Awaitable[float]]:
                return lambda: sequential_rate(fn, s.round_seconds, s.max_ops_per_round)

            def conc(fn: Call) -> Callable[[], Awaitable[float]]:
                return lambda: concurrent_rate(
                    fn, s.in_flight, s.round_seconds, s.max_ops_per_round
                )

            patterns = ((f"{label}, sequential", seq), (f"{label}, {s.in_flight} in flight", conc))
            for name, pattern in patterns:
                qpq_cpu: list[float] = []
                raw_cpu: list[float] = []
                qpq, base = await paired(
                    with_cpu(server.process.pid, pattern(qpq_call), qpq_cpu),
                    with_cpu(echo_pid, pattern(raw_call), raw_cpu),
                    s.rounds,
                )
                note = (
                    f"server CPU per call {statistics.median(qpq_cpu):.2f} ms "
                    f"(raw echo server {statistics.median(raw_cpu):.2f} ms)"
                )
                rows.append(Row(name, "calls/s", qpq, base, "raw echo", 0.8, note))
        rows.extend(await bench_bulk(server, client, raw, identity, settings))
    return rows


async def bench_bulk(
    server: RunningServer,
    client: CallClient,
    raw: RawClientProtocol,
    identity: qpq_core.Identity,
    settings: Settings,
) -> list[Row]:
    s = settings
    sender = qpq_core.MlsClient(identity)
    receiver = qpq_core.MlsClient(qpq_core.Identity.generate())
    group_id = await new_group(server, sender, [receiver], client)
    # One 1 MiB message published again and again: the server stores each
    # publish (it checks framing and membership, not replays).
    publish = sized(sender, group_id, MIB)
    payload = publish.payload
    sink_payload = SINK_MARKER + payload[len(SINK_MARKER) :]

    async def qpq_call() -> object:
        result: Published = await client.call(publish)
        return result

    async def echo_call() -> object:
        return await raw.request(payload)

    async def sink_call() -> object:
        return await raw.request(sink_payload)

    def mbps(fn: Call) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            return await sequential_rate(fn, s.bulk_round_seconds, 1000) * MIB / 1e6

        return run

    async with server.connect() as receiving:
        await receiving.authenticate(receiver.identity)

        async def drain() -> None:
            # Untimed: keep the receiver's queue (and its sender's share of it,
            # capped) and the database small between rounds.
            await receiving.call(Ack(up_to_seq=ACK_ALL))

        for _ in range(3):
            await qpq_call()
            await echo_call()
            await sink_call()
        await drain()
        qpq_echo, echo = await paired(mbps(qpq_call), mbps(echo_call), s.rounds, drain)
        qpq_sink, sink = await paired(mbps(qpq_call), mbps(sink_call), s.rounds, drain)
    return [
        Row("Publish 1 MiB, sequential", "MB/s", qpq_echo, echo, "raw 1 MiB echo", 0.9),
        Row(
            "Publish 1 MiB, sequential",
            "MB/s",
            qpq_sink,
            sink,
            "raw 1 MiB upload",
            None,
            "same traffic shape (1 MiB up, a few bytes back); no target",
        ),
    ]


# ---- 3: publish -> subscriber delivery latency ------------------------------------


async def bench_latency(  # noqa: PLR0915 - one scenario reads best in one place
    server: RunningServer, settings: Settings, rate: int
) -> list[Row]:
    s = settings
    peers = s.latency_peers
    senders_mls = [qpq_core.MlsClient(qpq_core.Identity.generate()) for _ in range(peers)]
    receivers_mls = [qpq_core.MlsClient(qpq_core.Identity.generate()) for _ in range(peers)]
    latencies: list[float] = []
    received = 0
    total_to_send = int(rate * (s.latency_seconds + s.latency_warmup))
    last_received = 0.0
    all_received = asyncio.Event()
    subscribed = 0
    all_subscribed = asyncio.Event()
    measure_from_ns = 0
    stop = asyncio.Event()
    background: set[asyncio.Task[object]] = set()
    #: When each payload was handed to its sender's connection.
    sent_at: dict[bytes, int] = {}

    async def receiver(identity: qpq_core.Identity) -> None:
        nonlocal received, subscribed, last_received
        async with server.connect() as client:
            await client.authenticate(identity)
            async with client.subscribe() as events:
                subscribed += 1
                if subscribed == peers:
                    all_subscribed.set()
                since_ack = 0
                # An error event ending the stream is raised (qpq_proto.quic.subscribe).
                async for event in events:
                    now = time.perf_counter_ns()
                    sent = sent_at[event.payload]
                    if sent >= measure_from_ns:
                        latencies.append((now - sent) / 1e6)
                    received += 1
                    last_received = time.perf_counter()
                    since_ack += 1
                    if since_ack >= 100:
                        since_ack = 0
                        task = asyncio.create_task(client.call(Ack(up_to_seq=event.seq)))
                        background.add(task)
                        task.add_done_callback(background.discard)
                    if received >= total_to_send:
                        all_received.set()
                    if stop.is_set():
                        break

    async with contextlib.AsyncExitStack() as stack:
        senders: list[CallClient] = []
        pools: list[list[Publish]] = []
        per_sender = -(-total_to_send // peers)
        for sender, receiving in zip(senders_mls, receivers_mls, strict=True):
            client = await stack.enter_async_context(server.connect())
            await client.authenticate(sender.identity)
            senders.append(client)
            # Each sender in a group of two with its subscriber; its messages
            # are encrypted before the clock starts.
            group_id = await new_group(server, sender, [receiving], client)
            pools.append([application(sender, group_id, bytes(256)) for _ in range(per_sender)])
        message_bytes = len(pools[0][0].payload)
        receivers = [asyncio.create_task(receiver(r.identity)) for r in receivers_mls]
        async with asyncio.timeout(30):
            await all_subscribed.wait()
        in_flight = 0
        sent = skipped = 0

        async def send(index: int) -> None:
            nonlocal in_flight
            in_flight += 1
            try:
                call = pools[index % peers][index // peers]
                sent_at[call.payload] = time.perf_counter_ns()
                await senders[index % peers].call(call)
            finally:
                in_flight -= 1

        start = time.perf_counter()
        measure_from_ns = time.perf_counter_ns() + int(s.latency_warmup * 1e9)
        tasks: list[asyncio.Task[None]] = []
        while sent + skipped < total_to_send:
            due = min(total_to_send, int((time.perf_counter() - start) * rate))
            while sent + skipped < due:
                if in_flight >= 2000:  # the server is not keeping up: do not pile on
                    skipped += 1
                    continue
                tasks.append(asyncio.create_task(send(sent + skipped)))
                sent += 1
            await asyncio.sleep(0.002)
        send_seconds = time.perf_counter() - start
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                if sent == total_to_send:
                    await all_received.wait()
                else:
                    await asyncio.sleep(1.0)
        stop.set()
        for task in receivers:
            task.cancel()
        await asyncio.gather(*receivers, *background, return_exceptions=True)
    offered = sent / send_seconds
    delivered = received / max(last_received - start, 1e-9)
    note = (
        f"{peers} sender + {peers} subscriber connections, each pair a group of two; "
        f"256 B plaintexts ({message_bytes} B MLS messages), "
        f"{offered:,.0f} msg/s offered for {send_seconds:.1f} s "
        f"(first {s.latency_warmup:g} s not counted); {received}/{sent} delivered, "
        f"at {delivered:,.0f} msg/s"
    )
    if skipped:
        note += f", {skipped} not sent (server behind)"
    if not latencies:
        return [Row(f"latency at {rate} msg/s", "ms", float("nan"), note="none: " + note)]
    return [
        Row(
            f"Publish -> subscriber p50 at {rate} msg/s",
            "ms",
            percentile(latencies, 0.5),
            note=note,
        ),
        Row(f"Publish -> subscriber p99 at {rate} msg/s", "ms", percentile(latencies, 0.99)),
    ]


# ---- 4: connections with a long-poll pending ---------------------------------------


async def bench_connections(  # noqa: PLR0915 - one scenario reads best in one place
    server: RunningServer, settings: Settings
) -> list[Row]:
    s = settings
    pid = server.process.pid
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = s.connections + 256
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    target = min(s.connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 256)
    identities = [qpq_core.Identity.generate() for _ in range(target)]
    # A few connections will be woken by a Welcome: their owners put a KeyPackage up.
    planned = set(list(range(0, target, max(1, target // 10)))[:10])
    packages = {i: qpq_core.MlsClient(identities[i]).create_key_packages(1) for i in planned}
    await settle(pid, 5.0)
    before = rss_kib(pid)
    opening = asyncio.Semaphore(32)
    release = asyncio.Event()
    give_up = asyncio.Event()
    holding = 0
    held: set[int] = set()
    woken: set[int] = set()
    sample: set[int] = set()
    sample_woken = asyncio.Event()

    async def hold(index: int) -> None:
        nonlocal holding
        async with contextlib.AsyncExitStack() as stack:
            async with opening:
                if give_up.is_set():
                    return
                client = await stack.enter_async_context(server.connect())
                await client.authenticate(identities[index])
                if index in packages:
                    await client.call(UploadKeyPackages(packages=packages[index].packages))
            holding += 1
            held.add(index)
            while not release.is_set():
                # A real client's long-poll loop: ask again when one times out.
                result: Messages = await client.call(FetchWait(limit=1, timeout_ms=55_000))
                if result.messages:
                    woken.add(index)
                    if sample and sample <= woken:
                        sample_woken.set()
                    await release.wait()

    started = time.perf_counter()
    tasks = [asyncio.create_task(hold(i)) for i in range(target)]
    deadline = started + s.connections_budget
    while holding < target and time.perf_counter() < deadline:
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            break
        await asyncio.sleep(0.1)
    give_up.set()
    open_seconds = time.perf_counter() - started
    opened = holding
    await settle(pid, 10.0)
    after = rss_kib(pid)
    # Prove the long-polls are really pending: a Welcome to a few wakes them now
    # (one commit adds them all to a new group).
    sample.update(planned & held)
    async with server.connect() as sender:
        poker = qpq_core.MlsClient(qpq_core.Identity.generate())
        await sender.authenticate(poker.identity)
        created = poker.create_group()
        await sender.call(CreateGroup(group_info=created.group_info))
        claimed = [
            (await sender.call(FetchKeyPackage(identity_key=identities[i].public_key))).package
            for i in sorted(sample)
        ]
        if claimed:
            await sender.call(commit_call(poker.add_members(created.group_id, claimed)))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await sample_woken.wait()
    release.set()
    errors = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()]
    for task in tasks:
        task.cancel()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks, return_exceptions=True)
    per_connection = (after - before) / opened if opened else float("nan")
    note = (
        f"{opened}/{s.connections} connections authenticated with a FetchWait pending "
        f"(opened in {open_seconds:.1f} s); server RSS {before / 1024:.1f} -> "
        f"{after / 1024:.1f} MiB; {len(woken & sample)}/{len(sample)} sampled "
        "long-polls woke on a Welcome"
    )
    if opened < s.connections:
        note += f"; SCALED DOWN: only {opened} within {s.connections_budget:.0f} s"
    if errors:
        note += f"; {len(errors)} connection errors, first: {errors[0]!r}"
    return [Row("server RSS per connection (FetchWait pending)", "KiB", per_connection, note=note)]


# ---- 5: SQLCipher beside plain SQLite ---------------------------------------------


def store_delivery(sender: bytes, payload: bytes, cap: int) -> Delivery:
    now_ms = int(time.time() * 1000)
    return Delivery(
        sender=sender,
        payload=payload,
        now_ms=now_ms,
        expires_ms=now_ms + 3_600_000,
        depth_cap=cap,
        share_cap=cap,
        quota_bytes=1 << 40,
    )


async def bench_store(workdir: Path, settings: Settings) -> list[Row]:
    s = settings
    rows: list[Row] = []
    encrypted = await SqlCipherStorage.open(workdir / "store-cipher" / "qpq.db", TEST_DB_KEY)
    plain = await SqlCipherStorage.open(workdir / "store-plain" / "qpq.db", "")
    recipient, sender = os.urandom(32), os.urandom(32)
    group_id = b"bench-group"
    # A group of two as the server keeps it (its state rows are stand-ins: the
    # store never reads them); a publish is the group's fan-out to the recipient.
    for store in (encrypted, plain):
        await store.create_group(
            group_id,
            creator=sender,
            epoch=0,
            members=(recipient, sender),
            state=((b"state", b"stand-in"),),
            group_info=b"group-info",
            now_ms=0,
            max_created=1,
        )
    try:
        for size in (256, 64 * 1024):
            payload = os.urandom(size)

            def cycle(store: SqlCipherStorage, payload: bytes = payload) -> Call:
                async def run() -> object:
                    sent = store_delivery(sender, payload, DEFAULT_LIMITS.queue_depth_per_sender)
                    _epoch, delivered = await store.send_application(
                        group_id, epoch=0, oldest_epoch=0, delivery=sent
                    )
                    seq = delivered.seqs[recipient]
                    got = await store.fetch(
                        recipient, after_seq=0, limit=1, max_bytes=8 * MIB, now_ms=sent.now_ms
                    )
                    assert got
                    assert got[0].seq == seq
                    return await store.ack(recipient, seq)

                return run

            for store in (encrypted, plain):
                for _ in range(20):
                    await cycle(store)()

            def rate(fn: Call) -> Callable[[], Awaitable[float]]:
                return lambda: sequential_rate(fn, s.store_round_seconds, s.max_ops_per_round)

            cipher_rate, plain_rate = await paired(
                rate(cycle(encrypted)), rate(cycle(plain)), s.rounds
            )
            label = f"{size} B" if size < 1024 else f"{size // 1024} KiB"
            rows.append(
                Row(
                    f"SQLCipher store, publish+fetch+ack {label}",
                    "cycles/s",
                    cipher_rate,
                    plain_rate,
                    "plain SQLite",
                    0.5,
                    "in process; WAL, synchronous=FULL (an fsync per write) on ext4"
                    if size == 256
                    else "",
                )
            )
        # Group commit: publishes in flight share one COMMIT (one fsync) per batch.
        payload = os.urandom(256)
        width = s.in_flight

        def publish(store: SqlCipherStorage) -> Call:
            async def run() -> object:
                sent = store_delivery(sender, payload, 10**9)
                return await store.send_application(
                    group_id, epoch=0, oldest_epoch=0, delivery=sent
                )

            return run

        def wide(fn: Call) -> Callable[[], Awaitable[float]]:
            return lambda: concurrent_rate(fn, width, s.store_round_seconds, s.max_ops_per_round)

        stats = encrypted._thread.stats
        batches, jobs = stats.batches, stats.jobs
        cipher_rate, plain_rate = await paired(
            wide(publish(encrypted)), wide(publish(plain)), s.rounds
        )
        per_commit = (stats.jobs - jobs) / max(stats.batches - batches, 1)
        rows.append(
            Row(
                f"SQLCipher store, publish 256 B, {width} in flight",
                "calls/s",
                cipher_rate,
                plain_rate,
                "plain SQLite",
                0.5,
                f"group commit: {per_commit:.0f} publishes per COMMIT on average",
            )
        )
    finally:
        await encrypted.close()
        await plain.close()
    return rows


# ---- 6: one node and two nodes on PostgreSQL, beside SQLCipher ------------------------

#: Members per group: one publisher and its recipients.
NODES_GROUP_SIZE = 10
NODES_PUBLISHERS = 4
#: Publishes each publisher keeps in flight.
NODES_IN_FLIGHT = 8
#: Queues never fill during a round: every publish writes one row per recipient.
NODES_ENV = {
    **SERVER_ENV,
    "QPQ_QUEUE_DEPTH": "10000000",
    "QPQ_QUEUE_DEPTH_PER_SENDER": "10000000",
    # A connection per publish in flight: publishes of one group wait for
    # each other's row locks, and must not hold up the other groups' too.
    "QPQ_DATABASE_POOL_SIZE": str(NODES_PUBLISHERS * NODES_IN_FLIGHT),
}


async def publish_rate(servers: list[RunningServer], settings: Settings) -> float:
    """Publishes/s of NODES_PUBLISHERS publishers, each in its own group, spread over
    ``servers`` (the groups are built through the first)."""
    s = settings
    first = servers[0]
    publishers = [qpq_core.MlsClient(qpq_core.Identity.generate()) for _ in range(NODES_PUBLISHERS)]
    recipients: list[qpq_core.MlsClient] = []
    calls: list[Publish] = []
    for publisher in publishers:
        joiners = [
            qpq_core.MlsClient(qpq_core.Identity.generate()) for _ in range(NODES_GROUP_SIZE - 1)
        ]
        recipients.extend(joiners)
        async with first.connect() as client:
            await client.authenticate(publisher.identity)
            group_id = await new_group(first, publisher, joiners, client)
        # One message published again and again: the server stores each publish.
        calls.append(sized(publisher, group_id, 256))

    async def drain() -> None:
        # Untimed: every recipient acknowledges its queue between rounds.
        for recipient in recipients:
            async with first.connect() as client:
                await client.authenticate(recipient.identity)
                await client.call(Ack(up_to_seq=ACK_ALL))

    async def one_round() -> float:
        async with contextlib.AsyncExitStack() as stack:
            clients = []
            for index, publisher in enumerate(publishers):
                client = await stack.enter_async_context(servers[index % len(servers)].connect())
                await client.authenticate(publisher.identity)
                clients.append(client)
            done = 0
            deadline = time.perf_counter() + s.round_seconds * 2

            async def loop(client: CallClient, call: Publish) -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    await client.call(call)
                    done += 1

            started = time.perf_counter()
            await asyncio.gather(
                *(
                    loop(client, call)
                    for client, call in zip(clients, calls, strict=True)
                    for _ in range(NODES_IN_FLIGHT)
                )
            )
            return done / (time.perf_counter() - started)

    rates = []
    for _ in range(s.rounds):
        rates.append(await one_round())
        await drain()
    return statistics.median(rates)


async def bench_nodes(workdir: Path, settings: Settings) -> list[Row]:
    rates: dict[str, float] = {}
    lite_home = workdir / "nodes-sqlcipher"
    lite_home.mkdir()
    lite = start_server(lite_home, extra_env=NODES_ENV)
    try:
        rates["sqlcipher"] = await publish_rate([lite], settings)
    finally:
        lite.stop()
    cluster = PostgresCluster(durable=True)
    try:
        for count in (1, 2):
            env = {**NODES_ENV, "QPQ_DATABASE_URL": cluster.schema_url()}
            servers: list[RunningServer] = []
            try:
                for index in range(count):
                    home = workdir / f"nodes-pg{count}-{index}"
                    home.mkdir()
                    servers.append(start_server(home, extra_env=env))
                rates[f"pg{count}"] = await publish_rate(servers, settings)
            finally:
                for server in servers:
                    server.stop()
    finally:
        cluster.stop()
    fan = NODES_GROUP_SIZE - 1
    label = f"Publish 256 B to {fan}, {NODES_PUBLISHERS} senders"
    note = (
        f"{NODES_PUBLISHERS} publishers x {NODES_IN_FLIGHT} in flight from this process; "
        "nodes, database and client share the machine's cores"
    )
    rows = [Row(f"{label}, SQLCipher, 1 node", "msgs/s", rates["sqlcipher"], note=note)]
    for unit, factor in (("msgs/s", 1), ("rcpts/s", fan)):
        rows.append(
            Row(
                f"{label}, PostgreSQL, 1 node",
                unit,
                rates["pg1"] * factor,
                rates["sqlcipher"] * factor,
                "SQLCipher, 1 node",
            )
        )
        rows.append(
            Row(
                f"{label}, PostgreSQL, 2 nodes",
                unit,
                rates["pg2"] * factor,
                rates["pg1"] * factor,
                "PostgreSQL, 1 node",
            )
        )
    rows.insert(1, Row(f"{label}, SQLCipher, 1 node", "rcpts/s", rates["sqlcipher"] * fan))
    return rows


# ---- report -------------------------------------------------------------------------


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "n/a"
    if unit in ("ms", "MB/s"):
        return f"{value:,.1f}"
    if unit == "KiB":
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'measurement':<48} {'unit':<9} {'qpq':>9} {'baseline':>9} "
        f"{'ratio':>6} {'target':>7}  {'':<6} baseline is"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = row.ratio
        target = "—" if row.target is None else f"≥ {row.target:g}"
        verdict = ""
        if row.target is not None and ratio is not None:
            verdict = "met" if ratio >= row.target else "MISSED"
        ratio_text = "—" if ratio is None else f"{ratio:.2f}"
        print(
            f"{row.name:<48} {row.unit:<9} {fmt(row.value, row.unit):>9} "
            f"{fmt(row.baseline, row.unit):>9} {ratio_text:>6} {target:>7}  {verdict:<6} "
            f"{row.baseline_label}"
        )
    notes = [(row.name, row.note) for row in rows if row.note]
    if notes:
        print()
        for name, note in notes:
            print(f"* {name}: {note}")


def machine_note() -> str:
    cores = len(os.sched_getaffinity(0))
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("qpq-server", "aioquic", "sqlcipher3", "psycopg")
    )
    return (
        f"{datetime.date.today().isoformat()} · {cores} cores usable ({os.cpu_count()} online) · "
        f"{platform.processor() or platform.machine()} · Python {platform.python_version()} · "
        f"{versions}"
    )


async def run(settings: Settings, sections: set[str]) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="qpq-bench-") as tmp:
        workdir = Path(tmp)
        if sections & {"calls", "latency", "connections"}:
            server = start_server(workdir, extra_env=SERVER_ENV)
            try:
                if "calls" in sections:
                    with echo_server_process(server, workdir) as (echo_port, echo_pid):
                        identity = qpq_core.Identity.generate()
                        rows.extend(
                            await bench_calls(server, echo_port, echo_pid, settings, identity)
                        )
                if "latency" in sections:
                    for rate in (settings.latency_rate, settings.light_rate):
                        rows.extend(await bench_latency(server, settings, rate))
                if "connections" in sections:
                    rows.extend(await bench_connections(server, settings))
            finally:
                server.stop()
        if "store" in sections:
            rows.extend(await bench_store(workdir, settings))
        if "nodes" in sections:
            rows.extend(await bench_nodes(workdir, settings))
    return rows


SECTIONS = ("calls", "latency", "connections", "store", "nodes")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument(
        "--only", choices=SECTIONS, action="append", help="run only this section (repeatable)"
    )
    parser.add_argument("--connections", type=int, help="connections for the RSS section")
    parser.add_argument("--echo-server", nargs=3, metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        cert, key, ready = (Path(p) for p in args.echo_server)
        asyncio.run(serve_echo(cert, key, ready))
        return
    settings = Settings.quick() if args.quick else Settings.full()
    if args.connections:
        settings = Settings(**{**_fields(settings), "connections": args.connections})
    sections = set(args.only or SECTIONS)
    print(f"qpq-server benchmark{' (--quick)' if args.quick else ''}: {machine_note()}")
    print(
        "server and raw echo server are separate processes on 127.0.0.1; "
        "the client is this process\n"
    )
    started = time.perf_counter()
    rows = asyncio.run(run(settings, sections))
    print_table(rows)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def _fields(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in Settings.__dataclass_fields__}


if __name__ == "__main__":
    main()
