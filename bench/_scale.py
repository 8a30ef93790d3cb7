"""Scale: many connected clients, each with a receive pending, and latency beside them.

Idle clients are held open in steps (100, 1,000, ... as far as the machine
allows); at each step the server's RSS growth per idle client is read from
/proc and the 1:1 latency of the messaging phases is measured again between
two library clients. An idle client is what a receiver in its receive loop
holds on the server, opened at the protocol level so that thousands fit in
this process: for qpq a QUIC connection that proved its identity and holds
a subscribe stream open (what ``Client.follow()`` does), for Synapse a registered
user whose ``/sync`` long-poll is pending (what ``sync_forever`` does).
Creating thousands of full profiles (qpq uploads 100 KeyPackages per
profile) would measure set-up, not scale.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

import qpq_core
from bench._measure import percentile, rss_kib, settle
from bench._messenger import Messenger
from bench._qpq import QpqMessenger
from bench._synapse import SynapseMessenger
from bench._workload import sequential
from qpq_server.testing import open_client

#: Idle clients opening at once.
_OPENING = 32
#: File descriptors this process keeps for everything else.
_SPARE_FDS = 512
_SYNC_TIMEOUT_MS = 30_000
#: How often an idle qpq client pings the server, as Client.follow() does.
_KEEPALIVE_SECONDS = 15.0


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
    steps: list[ScaleStep] = field(default_factory=list)
    stopped: str = ""


#: Open idle client ``index``, await ``held()`` once it is held, keep it until ``release``.
Hold = Callable[[int, asyncio.Event, Callable[[], Awaitable[None]]], Awaitable[None]]


def _qpq_hold(messenger: QpqMessenger) -> Hold:
    server = messenger.server

    async def hold(
        _index: int, release: asyncio.Event, held: Callable[[], Awaitable[None]]
    ) -> None:
        async with open_client(
            server.host, server.port, token=server.token, pin=server.fingerprint
        ) as client:
            await client.authenticate(qpq_core.Identity.generate())
            async with client.subscribe() as events:
                await held()
                pushed = asyncio.ensure_future(anext(events))
                released = asyncio.ensure_future(release.wait())
                try:
                    while not (pushed.done() or released.done()):
                        await asyncio.wait(
                            (pushed, released),
                            timeout=_KEEPALIVE_SECONDS,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        client.transport.ping()  # as Client.follow() does when idle
                finally:
                    for task in (pushed, released):
                        task.cancel()
                    await asyncio.gather(pushed, released, return_exceptions=True)
                if pushed.done() and not pushed.cancelled():
                    raise RuntimeError(f"an idle client's stream moved: {pushed.result()!r}")

    return hold


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


class _IdlePool:
    """Idle clients held open until :meth:`close`, opened a few at a time."""

    def __init__(self, hold: Hold) -> None:
        self._hold = hold
        self._release = asyncio.Event()
        self._opening = asyncio.Semaphore(_OPENING)
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._failure: BaseException | None = None
        self.held = 0

    async def _one(self, index: int) -> None:
        await self._opening.acquire()
        opened = False

        async def held() -> None:
            nonlocal opened
            opened = True
            self.held += 1
            self._opening.release()
            await self._notify()

        try:
            if not self._release.is_set():
                await self._hold(index, self._release, held)
        except Exception as error:
            self._failure = self._failure or error
            await self._notify()
            raise
        finally:
            if not opened:
                self._opening.release()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def reach(self, target: int, budget: float) -> str:
        """Open clients up to ``target``; "" once held, else why not."""
        self._tasks += [asyncio.create_task(self._one(i)) for i in range(self.held, target)]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(budget), self._changed:
                await self._changed.wait_for(
                    lambda: self.held >= target or self._failure is not None
                )
        if self.held >= target:
            return ""
        if self._failure is not None:
            return f"a client failed: {self._failure!r}"
        return f"only {self.held:,} opened within the {budget:.0f} s budget"

    async def close(self) -> None:
        self._release.set()
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                await asyncio.gather(*self._tasks, return_exceptions=True)


def _file_limit() -> int:
    """Raise this process's open-file limit to its hard limit; the clients it leaves room for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] - _SPARE_FDS


async def _run(messenger: Messenger, hold: Hold, counts: ScaleCounts) -> Scale:
    result = Scale(messenger.name)
    pid = messenger.server_pid
    room = await messenger.room("pair", range(1))
    room_for = _file_limit()
    await settle(pid, 10.0)
    before = rss_kib(pid)
    pool = _IdlePool(hold)
    try:
        for target in counts.steps:
            if target > room_for:
                result.stopped = (
                    f"stopped before {target:,}: this process's open-file limit leaves room "
                    f"for {room_for:,} clients (one socket each)"
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
    return await _run(messenger, _qpq_hold(messenger), counts)


async def synapse(messenger: SynapseMessenger, counts: ScaleCounts) -> Scale:
    # One TCP connection per pending long-poll: no pool limit.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await _run(messenger, _synapse_hold(messenger, session), counts)
