"""The PostgreSQL storage backend (psycopg 3: a sync connection pool in worker threads).

Several qpq-server nodes may share one database: every guarantee of
:class:`~qpq_server._storage.Storage` is kept by PostgreSQL itself (row
locks and conditional updates; the operations' modules say which), never by
one process being the only writer. The operations are
:class:`~._sql_storage.SqlStorage`'s, written once for both backends; this
module is their runner. Each call is one transaction (READ COMMITTED) on a
pooled connection, in a worker thread (one per connection) so the event
loop never waits on the database. A transaction that PostgreSQL aborts as a
deadlock or serialization failure, or that loses a race to insert the same
unique key, is run again from the start; a call returns only after COMMIT,
which with PostgreSQL's default ``synchronous_commit = on`` is durable on
the database host.

Stored deliveries are announced with ``pg_notify`` inside their
transaction; :meth:`PostgresStorage.watch_deliveries` LISTENs on a
dedicated (asyncio) connection and wakes this node's fetchWait and
subscribe calls, whichever node stored the message.

The database URL is a secret (it may hold a password): only
:func:`~qpq_server._database_url.redact_url` of it ever appears in a message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import enum
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import errors
from psycopg_pool import ConnectionPool

from qpq_proto.errors import UnavailableError
from qpq_server import _ops_rates
from qpq_server._cleanup import EXPIRE_BATCH, in_batches
from qpq_server._database_url import redact_url, scrub
from qpq_server._engine import POSTGRES, Txn
from qpq_server._errors import StorageError
from qpq_server._logging import get_logger
from qpq_server._migrations import POSTGRES_MIGRATIONS, migrate
from qpq_server._notifier import DeliveryNotifier
from qpq_server._ops_queues import DELIVERY_CHANNEL
from qpq_server._ratelimit import RateBuckets
from qpq_server._sql_storage import SqlStorage, writes
from qpq_server._storage import Retention, Unused
from qpq_server._storage_thread import DEFAULT_BUDGET_BYTES

__all__ = ["DEFAULT_POOL_SIZE", "PostgresStorage"]

_T = TypeVar("_T")
_log = get_logger()

#: Connections one node keeps to the database at most (besides its listener).
DEFAULT_POOL_SIZE = 10
#: Runs of one transaction before its deadlock or serialization failure is reported.
_ATTEMPTS = 8
#: Seconds between attempts to get the listener connection back.
_LISTEN_RETRY_SECONDS = 1.0
_CONNECT_TIMEOUT_SECONDS = 10
#: Aborted for a concurrent transaction: run again. A unique key inserted
#: concurrently: the next run sees it and answers as for any existing row.
_RETRIED = (errors.SerializationFailure, errors.DeadlockDetected, errors.UniqueViolation)


class _Mode(enum.Enum):
    STATEMENTS = "each statement on its own (autocommit)"
    SNAPSHOT = "a read-only transaction on one snapshot"
    WRITE = "a read-write transaction"


def _then(then: Callable[[_T], None], future: asyncio.Future[_T]) -> None:
    """Hand a committed write's result to ``then``, whoever still awaits it."""
    if not future.cancelled() and future.exception() is None:
        then(future.result())


def _settled(future: asyncio.Future[Any]) -> None:
    # Its caller may be gone (cancelled): the outcome is taken here either way.
    if not future.cancelled():
        future.exception()


class PostgresStorage(SqlStorage):
    """:class:`~qpq_server._storage.Storage` on a PostgreSQL database shared by any number of nodes.

    Use :meth:`open`: it connects, migrates the schema (one node at a time)
    and opens the pool; StorageError (naming the redacted URL) when the
    database cannot be used.
    """

    backend = "postgresql"

    def __init__(self, pool: ConnectionPool[Any], url: str, budget_bytes: int) -> None:
        self._pool = pool
        self._url = url
        self._budget = budget_bytes
        #: Payload bytes of the write calls now running (the storage budget).
        self.pending_bytes = 0
        self._closed = False
        # A thread per connection: a call never waits for a thread, only for the database.
        self._workers = concurrent.futures.ThreadPoolExecutor(
            max_workers=pool.max_size, thread_name_prefix="qpq-pg"
        )
        self._listener: asyncio.Task[None] | None = None
        #: Per-identity rate limits live here, for every node (see _ratelimit).
        self.rate_buckets: RateBuckets | None = self

    def __repr__(self) -> str:
        return f"PostgresStorage({redact_url(self._url)!r})"

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
    ) -> PostgresStorage:
        """Connect, migrate and open a pool of at most ``pool_size`` connections.

        ``budget_bytes``: payload bytes of write calls that may run at once;
        a call beyond it is refused with UnavailableError (as on SQLCipher).
        """
        pool = await asyncio.to_thread(_open_pool, url, pool_size)
        return cls(pool, url, budget_bytes)

    # ---- the runner ---------------------------------------------------------

    async def _read(self, op: Callable[[Txn], _T], *, snapshot: bool = False) -> _T:
        return await self._submit(op, _Mode.SNAPSHOT if snapshot else _Mode.STATEMENTS)

    async def _write(
        self, op: Callable[[Txn], _T], size: int = 0, then: Callable[[_T], None] | None = None
    ) -> _T:
        return await self._submit(op, _Mode.WRITE, size, then)

    async def _submit(
        self,
        op: Callable[[Txn], _T],
        mode: _Mode,
        size: int = 0,
        then: Callable[[_T], None] | None = None,
    ) -> _T:
        """Run ``op`` in a worker thread; ``size`` counts against the budget till it is done.

        A caller that is cancelled does not stop the transaction (as on
        SQLCipher, a call handed over runs to its end); the budget is
        released when it ends.
        """
        if self._closed:
            raise StorageError("the database is closed")
        if size:
            if self.pending_bytes and self.pending_bytes + size > self._budget:
                raise UnavailableError(
                    "the server has more waiting to be stored than it may hold; retry later"
                )
            self.pending_bytes += size
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._workers, self._transaction, op, mode)
        future.add_done_callback(_settled)
        if then is not None:
            future.add_done_callback(functools.partial(_then, then))
        if size:
            future.add_done_callback(lambda _future: self._release(size))
        return await asyncio.shield(future)

    def _release(self, size: int) -> None:
        self.pending_bytes -= size

    def _transaction(self, op: Callable[[Txn], _T], mode: _Mode) -> _T:
        """``op`` in one transaction (on a worker thread), again from the start if
        PostgreSQL aborts it for a concurrent one; its result after COMMIT."""
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._pool.connection() as conn, conn.cursor() as cursor:
                    txn = Txn(cursor, POSTGRES)
                    if mode is _Mode.STATEMENTS:
                        return op(txn)
                    with conn.transaction():
                        if mode is _Mode.SNAPSHOT:
                            txn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                        return op(txn)
            except _RETRIED:
                if attempt == _ATTEMPTS:
                    raise
            except psycopg.OperationalError as error:
                _log.warning("database unavailable: %s", scrub(str(error).strip(), self._url))
                raise UnavailableError("the database is unavailable; retry later") from None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        # Calls handed over run to their end first.
        await asyncio.to_thread(self._workers.shutdown)
        await asyncio.to_thread(self._pool.close)

    # ---- wake-ups across nodes ---------------------------------------------

    async def watch_deliveries(self, notifier: DeliveryNotifier) -> None:
        """Wake ``notifier``'s waiters for every delivery any node commits.

        Returns once this node LISTENs: a waiter registers its watch before
        it reads its queue, so a message committed after that read is
        announced to a listener that was already listening. If the listener
        connection is lost, every waiter is woken once it is back (whatever
        was announced in between is lost, so each re-reads its queue).
        """
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._listener = asyncio.create_task(self._listen(notifier, ready))
        await ready

    async def _listen(self, notifier: DeliveryNotifier, ready: asyncio.Future[None]) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_SECONDS
                )
                async with conn:
                    await conn.execute(f"LISTEN {DELIVERY_CHANNEL}")
                    if ready.done():
                        notifier.notify_all()
                    else:
                        ready.set_result(None)
                    async for note in conn.notifies():
                        notifier.notify(bytes.fromhex(note.payload))
            except psycopg.Error as error:
                reason = scrub(str(error).strip(), self._url)
                if not ready.done():
                    ready.set_exception(
                        StorageError(f"cannot listen on {redact_url(self._url)}: {reason}")
                    )
                    return
                _log.warning("delivery listener lost its connection: %s; reconnecting", reason)
            # A pause before reconnecting, so a database that is down is not hammered.
            await asyncio.sleep(_LISTEN_RETRY_SECONDS)

    # ---- rate limits shared by the nodes ----------------------------------

    take_rate_tokens = writes(_ops_rates.take_rate_tokens)
    debit_rate_tokens = writes(_ops_rates.debit_rate_tokens)

    async def remove_unused(self, *, now_ms: int, retention: Retention) -> Unused:
        unused = await super().remove_unused(now_ms=now_ms, retention=retention)
        full = await in_batches(self._write, _ops_rates.remove_full_buckets, None, EXPIRE_BATCH)
        return dataclasses.replace(unused, rate_limits=full)


def _open_pool(url: str, pool_size: int) -> ConnectionPool[Any]:
    """Connect, migrate, warn if not durable, then open the pool (blocking)."""
    with _refusals("connect to", url):
        conn = psycopg.connect(url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_SECONDS)
    with _refusals("prepare", url), conn:

        @contextmanager
        def transaction() -> Iterator[Txn]:
            with conn.transaction(), conn.cursor() as cursor:
                yield Txn(cursor, POSTGRES)

        migrate(transaction, POSTGRES_MIGRATIONS)
        _warn_if_not_durable(conn)
    pool: ConnectionPool[Any] = ConnectionPool(
        url,
        min_size=1,
        max_size=pool_size,
        kwargs={"autocommit": True, "connect_timeout": _CONNECT_TIMEOUT_SECONDS},
        open=False,
        name="qpq",
    )
    try:
        with _refusals("connect to", url):
            pool.open(wait=True, timeout=_CONNECT_TIMEOUT_SECONDS)
    except BaseException:
        pool.close()
        raise
    return pool


@contextmanager
def _refusals(doing: str, url: str) -> Iterator[None]:
    """A driver error as StorageError naming the redacted URL, never the password."""
    try:
        yield
    except psycopg.Error as error:
        reason = scrub(str(error).strip(), url)
        raise StorageError(f"cannot {doing} database {redact_url(url)}: {reason}") from None


def _warn_if_not_durable(conn: psycopg.Connection[Any]) -> None:
    """Say so loudly when the database may lose what it acknowledged in a crash.

    A call is answered after COMMIT; with ``fsync`` or ``synchronous_commit``
    off, PostgreSQL answers COMMIT before the WAL is on disk.
    """
    for setting in ("fsync", "synchronous_commit"):
        row = conn.execute("SELECT setting FROM pg_settings WHERE name = %s", (setting,)).fetchone()
        if row is not None and str(row[0]) == "off":
            _log.warning(
                "database has %s = off: messages acknowledged to clients can be lost "
                "if the database host crashes",
                setting,
            )
