"""The one thread that owns the database connection, with group commit for writes.

Jobs come from the event loop. A read runs on its own, outside any
transaction, so it sees only committed data. Write jobs are taken in
batches: when the thread takes one, it also takes the write jobs already
queued behind it (at most :data:`MAX_BATCH_JOBS`, about
:data:`MAX_BATCH_BYTES` of payload), and the batch runner executes them in
arrival order in one transaction with a savepoint each and a single COMMIT.
With ``synchronous=FULL`` that is one fsync for the whole batch instead of
one per job, and jobs queue up exactly while the previous fsync runs.

Futures are resolved only after the batch runner has returned, that is
after COMMIT: no caller (and so no answer or delivery wake-up) sees a write
before it is durable. If the batch fails as a whole, every job in it gets
that error.

What waits here is held in memory: each write job carries its payload size,
and the bytes of the jobs queued or running are bounded by a budget. A job
that would take them over it is refused at once with UnavailableError
(nothing is stored, the caller may retry), unless nothing else is waiting:
one call of any allowed size always gets through.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from qpq_proto.errors import UnavailableError
from qpq_server._errors import StorageError
from qpq_server._logging import get_logger

__all__ = [
    "DEFAULT_BUDGET_BYTES",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_JOBS",
    "BatchRunner",
    "StorageThread",
]

_T = TypeVar("_T")
_log = get_logger("storage")
#: Write jobs committed together, at most.
MAX_BATCH_JOBS = 256
#: Payload bytes after which a batch takes no further job (one job may exceed it).
MAX_BATCH_BYTES = 32 * 1024 * 1024
#: Payload bytes of write jobs that may be queued or running at once, by default.
DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024

#: Runs write jobs (each called with the transaction's Txn) in one transaction; returns
#: ``(True, value)`` or ``(False, exception)`` per job after COMMIT.
BatchRunner = Callable[[Sequence[Callable[[Any], object]]], list[tuple[bool, Any]]]


@dataclass(slots=True)
class _Job:
    func: Callable[..., Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    size: int = 0
    #: Gets the result on the loop once committed, whether or not anyone awaits it.
    then: Callable[[Any], None] | None = None


@dataclass(slots=True)
class _Stats:
    batches: int = 0  # write transactions attempted
    jobs: int = 0  # write jobs in them
    refused: int = 0  # write jobs refused because the budget was spent
    sizes: list[int] = field(default_factory=list)  # recent batch sizes (tests, diagnostics)


def _settle(results: list[tuple[_Job, bool, Any]]) -> None:
    """Resolve futures on their loops, one loop callback per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, bool, Any]]] = {}
    for item in results:
        by_loop.setdefault(item[0].loop, []).append(item)
    for loop, items in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_apply, items)


def _apply(items: list[tuple[_Job, bool, Any]]) -> None:
    for job, ok, value in items:
        if ok and job.then is not None:
            try:
                job.then(value)
            except Exception:  # noqa: BLE001 - one hook's failure must not strand the others
                _log.exception("a hook on a committed write failed")
        if job.future.done():  # the caller was cancelled
            continue
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)


class StorageThread:
    """A dedicated thread running read jobs one by one and write jobs in batches."""

    def __init__(self, name: str = "qpq-db", *, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self._cond = threading.Condition()
        self._budget = budget_bytes
        #: Payload bytes of the write jobs queued or running (under ``_cond``).
        self.pending_bytes = 0
        self._reads: collections.deque[_Job] = collections.deque()
        self._writes: collections.deque[_Job] = collections.deque()
        self._runner: BatchRunner | None = None
        self._stopping = False
        self._on_exit: Callable[[], None] | None = None
        self._exited: _Job | None = None
        self._held = False
        self._queued_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.stats = _Stats()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    # ---- the event-loop side -----------------------------------------------

    def attach(self, runner: BatchRunner, on_exit: Callable[[], None]) -> None:
        """Set how to run write batches and what to run last (on the thread)."""
        self._runner = runner
        self._on_exit = on_exit

    async def read(self, func: Callable[[], _T]) -> _T:
        """Run ``func()`` on the thread, outside any transaction."""
        return await self._submit(func, write=False, size=0)  # type: ignore[no-any-return]

    async def write(
        self, func: Callable[[Any], _T], size: int = 0, then: Callable[[_T], None] | None = None
    ) -> _T:
        """Run ``func(txn)`` in a write batch; return once it is committed.

        ``size`` (payload bytes) bounds how much one batch takes, and counts
        against the budget until the job is done: UnavailableError, at once,
        if it would go over. ``then`` gets the result on the loop once the
        batch committed, even if the caller was cancelled meanwhile; batches
        settle in order, and the jobs of one batch in order, so the ``then``
        of every write runs in the order the writes were submitted.
        """
        return await self._submit(func, write=True, size=size, then=then)  # type: ignore[no-any-return]

    def _submit(
        self,
        func: Callable[..., Any],
        *,
        write: bool,
        size: int,
        then: Callable[[Any], None] | None = None,
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        job = _Job(func, loop.create_future(), loop, size, then)
        with self._cond:
            if self._stopping:
                raise StorageError("the database is closed")
            if write and size:
                if self.pending_bytes and self.pending_bytes + size > self._budget:
                    self.stats.refused += 1
                    raise UnavailableError(
                        "the server has more waiting to be stored than it may hold; retry later"
                    )
                self.pending_bytes += size
            (self._writes if write else self._reads).append(job)
            queued = len(self._reads) + len(self._writes)
            self._cond.notify()
        if self._queued_waiters:
            for entry in [w for w in self._queued_waiters if queued >= w[0]]:
                self._queued_waiters.remove(entry)
                if not entry[1].done():
                    entry[1].set_result(None)
        return job.future

    async def stop(self) -> None:
        """Run the jobs already queued, then ``on_exit``; refuse new jobs."""
        loop = asyncio.get_running_loop()
        done = _Job(lambda: None, loop.create_future(), loop)
        with self._cond:
            if self._stopping:
                raise StorageError("the database is closed")
            self._stopping = True
            self._exited = done
            self._cond.notify()
        await done.future
        self._thread.join()

    # ---- test hooks: make a batch deterministic without timing --------------

    def hold(self) -> None:
        """Take no job until :meth:`release` (jobs keep queueing)."""
        with self._cond:
            self._held = True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify()

    async def queued(self, count: int) -> None:
        """Return once at least ``count`` jobs are waiting to be taken."""
        with self._cond:
            if len(self._reads) + len(self._writes) >= count:
                return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued_waiters.append((count, waiter))
        await waiter

    # ---- the storage thread ---------------------------------------------------

    def _take(self) -> tuple[list[_Job], list[_Job]] | None:
        """The reads queued now and the next write batch; None when stopped."""
        with self._cond:
            while True:
                pending = self._reads or self._writes
                if pending and not self._held:
                    break
                if not pending and self._stopping:
                    return None
                self._cond.wait()
            reads = list(self._reads)
            self._reads.clear()
            batch: list[_Job] = []
            size = 0
            while self._writes and len(batch) < MAX_BATCH_JOBS:
                if batch and size + self._writes[0].size > MAX_BATCH_BYTES:
                    break
                job = self._writes.popleft()
                batch.append(job)
                size += job.size
            return reads, batch

    def _main(self) -> None:
        while (taken := self._take()) is not None:
            reads, batch = taken
            results: list[tuple[_Job, bool, Any]] = []
            for job in reads:
                try:
                    results.append((job, True, job.func()))
                except BaseException as read_error:  # noqa: BLE001 - handed to the caller
                    results.append((job, False, read_error))
            if batch:
                results.extend(self._run_batch(batch))
                with self._cond:
                    self.pending_bytes -= sum(job.size for job in batch)
            _settle(results)
        outcome: tuple[bool, Any] = (True, None)
        if self._on_exit is not None:
            try:
                self._on_exit()
            except BaseException as exit_error:  # noqa: BLE001 - handed to stop()'s caller
                outcome = (False, exit_error)
        if self._exited is not None:
            _settle([(self._exited, *outcome)])

    def _run_batch(self, batch: list[_Job]) -> list[tuple[_Job, bool, Any]]:
        stats = self.stats
        stats.batches += 1
        stats.jobs += len(batch)
        stats.sizes.append(len(batch))
        del stats.sizes[:-1000]
        if self._runner is None:
            error = StorageError("the database is not open")
            return [(job, False, error) for job in batch]
        try:
            outcomes = self._runner([job.func for job in batch])
        except BaseException as error:  # noqa: BLE001 - every job of the batch gets it
            return [(job, False, error) for job in batch]
        return [(job, ok, value) for job, (ok, value) in zip(batch, outcomes, strict=True)]
