"""Scale: many connected clients, each with a receive pending, and latency beside them.

Idle clients are held open in steps (100, 1,000, ... as far as the machine
allows); at each step the server's RSS growth per idle client is read from
/proc and the 1:1 latency of the messaging phases is measured again between
two library clients. An idle client is what a receiver in its receive loop
holds on the server, opened at the protocol level so that thousands fit on
this machine (bench/_idle.py): for qpq a QUIC connection that proved its identity and holds
a subscribe stream open (what ``Client.follow()`` does), for Synapse a registered
user whose ``/sync`` long-poll is pending (what ``sync_forever`` does).
Creating thousands of full profiles (qpq uploads 100 KeyPackages per
profile) would measure set-up, not scale. qpq's idle clients are held by
worker processes, Synapse's in this process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from bench._idle import Hold, IdlePool, QpqTarget, WorkerPool
from bench._measure import percentile, rss_kib, settle
from bench._messenger import Messenger
from bench._qpq import QpqMessenger
from bench._synapse import SynapseMessenger
from bench._workload import sequential

#: qpq's idle clients are held by this many worker processes (bench/_idle.py):
#: with the server on one of the two cores, the handshakes and keep-alive
#: pings of 10,000 clients share the other, however many processes hold them.
_QPQ_WORKERS = 4
#: Handshakes in progress in each worker: few enough that each finishes well
#: within the server's auth deadline (10 s) on a loaded machine.
_QPQ_OPENING = 8
#: Synapse's /sync long-polls opening at once, in this process.
_SYNAPSE_OPENING = 32
_SYNC_TIMEOUT_MS = 30_000


@dataclass(frozen=True, slots=True)
class ScaleCounts:
    steps: tuple[int, ...]
    step_budget: float  # seconds to open one step's idle clients
    latency_messages: int

    @classmethod
    def full(cls) -> ScaleCounts:
        return cls(steps=(100, 1000, 3000, 10_000), step_budget=300.0, latency_messages=50)

    @classmethod
    def quick(cls) -> ScaleCounts:
        return cls(steps=(20, 100), step_budget=60.0, latency_messages=5)


@dataclass(frozen=True, slots=True)
class ScaleStep:
    idle: int
    open_seconds: float
    server_rss_mib: float
    per_client_kib: float
    p50: float
    p99: float


@dataclass(slots=True)
class Scale:
    system: str
    #: Where the idle clients were held and how many opened at once.
    held_by: str = ""
    #: Seconds each step had to open its idle clients.
    step_budget: float = 0.0
    steps: list[ScaleStep] = field(default_factory=list)
    stopped: str = ""


class _Pool(Protocol):
    @property
    def held(self) -> int: ...

    #: Idle clients the open-file limits leave room for.
    room: int

    def describe(self) -> str: ...

    async def reach(self, target: int, budget: float) -> str: ...

    async def close(self) -> None: ...


def _synapse_hold(messenger: SynapseMessenger, session: aiohttp.ClientSession) -> Hold:
    synapse = messenger.synapse

    async def hold(index: int, release: asyncio.Event, held: Callable[[], Awaitable[None]]) -> None:
        login = await synapse.register(session, f"idle{index}")
        headers = {"Authorization": f"Bearer {login.access_token}"}
        url = f"{synapse.url}/_matrix/client/v3/sync"
        since = ""
        first = True
        while not release.is_set():
            params = {"timeout": "0" if first else str(_SYNC_TIMEOUT_MS)}
            if since:
                params["since"] = since
            async with session.get(url, params=params, headers=headers) as response:
                response.raise_for_status()
                since = str((await response.json())["next_batch"])
            if first:
                first = False
                await held()

    return hold


async def _run(messenger: Messenger, pool: _Pool, counts: ScaleCounts) -> Scale:
    result = Scale(messenger.name, pool.describe(), counts.step_budget)
    pid = messenger.server_pid
    room = await messenger.room("pair", range(1))
    await settle(pid, 10.0)
    before = rss_kib(pid)
    try:
        for target in counts.steps:
            if target > pool.room:
                result.stopped = (
                    f"stopped before {target:,}: the open-file limits leave room "
                    f"for {pool.room:,} clients (one socket each)"
                )
                break
            started = time.perf_counter()
            why = await pool.reach(target, counts.step_budget)
            if why:
                result.stopped = f"stopped at the {target:,} step: {why}"
                break
            open_seconds = time.perf_counter() - started
            await settle(pid, 20.0)
            rss = rss_kib(pid)
            await messenger.refresh()
            latency = await sequential(
                messenger, room, f"scale{target}", counts.latency_messages, 2
            )
            result.steps.append(
                ScaleStep(
                    pool.held,
                    open_seconds,
                    rss / 1024,
                    (rss - before) / pool.held,
                    percentile(latency.latencies, 0.5),
                    percentile(latency.latencies, 0.99),
                )
            )
        else:
            result.stopped = f"every step done (the largest asked for is {counts.steps[-1]:,})"
    finally:
        await pool.close()
    return result


async def qpq(messenger: QpqMessenger, counts: ScaleCounts) -> Scale:
    server = messenger.server
    target = QpqTarget(server.host, server.port, server.fingerprint, server.token)
    pool = WorkerPool(target, _QPQ_WORKERS, _QPQ_OPENING)
    try:
        await pool.start()
    except BaseException:
        await pool.close()
        raise
    return await _run(messenger, pool, counts)


async def synapse(messenger: SynapseMessenger, counts: ScaleCounts) -> Scale:
    # One TCP connection per pending long-poll: no pool limit.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        pool = IdlePool(_synapse_hold(messenger, session), _SYNAPSE_OPENING)
        return await _run(messenger, pool, counts)
