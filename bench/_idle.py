"""Idle clients for the scale phase: opened a few at a time, held until released.

An idle client is what a receiver in its receive loop holds on the server.
:class:`IdlePool` holds them in this process (Synapse's ``/sync`` long-polls
are cheap here); :class:`WorkerPool` spreads qpq's over worker processes
(``python -m bench._idle``), because one asyncio process cannot complete
thousands of QUIC handshakes (pure-Python aioquic: ~7 ms of CPU each) and
keep thousands of held connections pinging while the server's auth deadline
runs (a connection must prove an identity within 10 s of its first packet).

A worker reads one JSON line of settings on stdin (the access token goes
there, never on its command line), then ``hold N`` lines: hold N clients in
all. It answers ``held N`` as each is held and ``failed WHY`` once, for the
first client that failed; stdin closing (or ``close``) releases them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import resource
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import qpq_core
from qpq_server.testing import open_client

#: File descriptors a process keeps for everything else.
SPARE_FDS = 512
#: A worker moves what it holds out of the cyclic collector's reach after
#: this many more clients are held (gc.freeze): a full collection over 2,500
#: held connections paused a worker for 2 to 4 s, finding nothing, and the
#: handshakes in progress there ran into the server's auth deadline.
_FREEZE_EVERY = 250
#: How often an idle qpq client pings the server, as Client.follow() does.
_KEEPALIVE_SECONDS = 15.0
_ROOT = Path(__file__).resolve().parent.parent
_CLOSE_WAIT = 60.0

#: Open idle client ``index``, await ``held()`` once it is held, keep it until ``release``.
Hold = Callable[[int, asyncio.Event, Callable[[], Awaitable[None]]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class QpqTarget:
    """Where a qpq idle client connects; ``token`` stays out of every repr."""

    host: str
    port: int
    pin: str
    token: str

    def __repr__(self) -> str:
        return f"QpqTarget({self.host}:{self.port})"


def qpq_hold(target: QpqTarget) -> Hold:
    """A QUIC connection that proved an identity and holds a subscribe stream open,
    pinging the server when idle as ``Client.follow()`` does."""

    async def hold(
        _index: int, release: asyncio.Event, held: Callable[[], Awaitable[None]]
    ) -> None:
        async with open_client(
            target.host, target.port, token=target.token, pin=target.pin
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


def file_limit() -> int:
    """Raise this process's open-file limit to its hard limit; the clients it leaves room for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] - SPARE_FDS


class IdlePool:
    """Idle clients held open in this process until :meth:`close`, opened a few at a time."""

    def __init__(self, hold: Hold, opening: int, on_change: Callable[[], None] = lambda: None):
        self._hold = hold
        self._opening_at_once = opening
        self._release = asyncio.Event()
        # Handshakes in progress: each must finish within the server's auth deadline.
        self._opening = asyncio.Semaphore(opening)
        self._changed = asyncio.Condition()
        self._on_change = on_change
        self._tasks: list[asyncio.Task[None]] = []
        self.failure: BaseException | None = None
        self.held = 0
        self.room = file_limit()

    def describe(self) -> str:
        return f"held in this process, {self._opening_at_once} opening at once"

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
            self.failure = self.failure or error
            await self._notify()
            raise
        finally:
            if not opened:
                self._opening.release()

    async def _notify(self) -> None:
        self._on_change()
        async with self._changed:
            self._changed.notify_all()

    def open(self, target: int) -> None:
        """Start opening clients up to ``target`` in all."""
        start = len(self._tasks)
        self._tasks += [asyncio.create_task(self._one(i)) for i in range(start, target)]

    async def reach(self, target: int, budget: float) -> str:
        """Open clients up to ``target``; "" once held, else why not."""
        self.open(target)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(budget), self._changed:
                await self._changed.wait_for(
                    lambda: self.held >= target or self.failure is not None
                )
        if self.held >= target:
            return ""
        if self.failure is not None:
            return f"a client failed: {self.failure!r}"
        return f"only {self.held:,} opened within the {budget:.0f} s budget"

    async def close(self) -> None:
        self._release.set()
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_WAIT):
                await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass(slots=True)
class _Worker:
    process: asyncio.subprocess.Process
    held: int = 0
    failure: str = ""
    reader: asyncio.Task[None] | None = None


class WorkerPool:
    """qpq idle clients held by ``workers`` processes, ``opening`` handshakes at once in each."""

    def __init__(self, target: QpqTarget, workers: int, opening: int) -> None:
        self._target = target
        self._count = workers
        self._opening = opening
        self._workers: list[_Worker] = []
        self._changed = asyncio.Condition()
        # Each worker raises its own open-file limit as this process would.
        self.room = workers * file_limit()

    def describe(self) -> str:
        at_most = self._count * self._opening
        return (
            f"held by {self._count} worker processes, each opening {self._opening} at once "
            f"({at_most} handshakes in progress at most)"
        )

    @property
    def held(self) -> int:
        return sum(worker.held for worker in self._workers)

    def _failure(self) -> str:
        return next((worker.failure for worker in self._workers if worker.failure), "")

    async def start(self) -> None:
        settings = {
            "host": self._target.host,
            "port": self._target.port,
            "pin": self._target.pin,
            "token": self._target.token,
            "opening": self._opening,
        }
        for _ in range(self._count):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench._idle",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=_ROOT,
            )
            worker = _Worker(process)
            worker.reader = asyncio.create_task(self._read(worker))
            self._workers.append(worker)
            self._send(worker, json.dumps(settings))

    @staticmethod
    def _send(worker: _Worker, line: str) -> None:
        stdin = worker.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(line.encode() + b"\n")

    async def _read(self, worker: _Worker) -> None:
        stdout = worker.process.stdout
        if stdout is None:
            raise RuntimeError("a worker has no stdout")
        async for raw in stdout:
            word, _, rest = raw.decode().rstrip("\n").partition(" ")
            if word == "held":
                worker.held = int(rest)
            elif word == "failed":
                worker.failure = worker.failure or rest
            async with self._changed:
                self._changed.notify_all()
        status = await worker.process.wait()
        worker.failure = worker.failure or f"a worker process exited with status {status}"
        async with self._changed:
            self._changed.notify_all()

    async def reach(self, target: int, budget: float) -> str:
        """Hold ``target`` clients across the workers; "" once held, else why not."""
        share, extra = divmod(target, self._count)
        for index, worker in enumerate(self._workers):
            self._send(worker, f"hold {share + (1 if index < extra else 0)}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(budget), self._changed:
                await self._changed.wait_for(lambda: self.held >= target or bool(self._failure()))
        if self.held >= target:
            return ""
        if self._failure():
            return f"a client failed: {self._failure()}"
        return f"only {self.held:,} opened within the {budget:.0f} s budget"

    async def close(self) -> None:
        for worker in self._workers:
            stdin = worker.process.stdin
            if stdin is not None and not stdin.is_closing():
                stdin.close()
        for worker in self._workers:
            try:
                async with asyncio.timeout(_CLOSE_WAIT):
                    await worker.process.wait()
            except TimeoutError:
                worker.process.kill()
                await worker.process.wait()
            if worker.reader is not None:
                await asyncio.gather(worker.reader, return_exceptions=True)


# ---- the worker process ----------------------------------------------------------


async def _worker() -> None:
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    settings = json.loads(await commands.readline())
    target = QpqTarget(settings["host"], settings["port"], settings["pin"], settings["token"])
    told_failure = False

    def report() -> None:
        nonlocal told_failure
        print(f"held {pool.held}", flush=True)
        if pool.held % _FREEZE_EVERY == 0:
            gc.freeze()
        if pool.failure is not None and not told_failure:
            told_failure = True
            print(f"failed {pool.failure!r}".splitlines()[0], flush=True)

    pool = IdlePool(qpq_hold(target), settings["opening"], report)
    try:
        async for raw in commands:
            word, _, rest = raw.decode().strip().partition(" ")
            if word == "hold":
                pool.open(int(rest))
            elif word == "close":
                break
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(_worker())
