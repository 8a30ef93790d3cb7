"""The SQLCipher storage backend (``sqlcipher3``, bundled SQLCipher).

All database work runs on one dedicated thread (:mod:`._storage_thread`), so
the event loop never blocks on SQLite and the single connection is never
shared. Correctness does not rest on that: every write call runs in a
``BEGIN IMMEDIATE`` transaction, so claims and commit-epoch checks stay right
with any number of writers. Write calls queued together share one
transaction (each in its own savepoint, so one call's error undoes only that
call) and one COMMIT; ``synchronous=FULL`` in WAL mode makes that COMMIT
durable before any of the calls is acknowledged.

The operations are :class:`~._sql_storage.SqlStorage`'s, written once for
both backends; this module is their runner: a read is a job of the storage
thread on its own, a write one job of its next batch, each given a
:class:`~._engine.Txn` on the SQLite engine. :class:`_Database` owns the
connection: opening, migrations, the batch transaction.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlcipher3

from qpq_server._engine import SQLITE, Txn
from qpq_server._errors import StorageError
from qpq_server._migrations import MIGRATIONS, Version, migrate
from qpq_server._notifier import DeliveryNotifier
from qpq_server._sql_storage import SqlStorage
from qpq_server._storage_thread import DEFAULT_BUDGET_BYTES, StorageThread
from qpq_server._usernames import username_key

__all__ = ["SqlCipherStorage"]

_T = TypeVar("_T")
#: A job's result, or the exception it raised.
_Outcome = tuple[bool, Any]


def _quote_key(key: str) -> str:
    # PRAGMA takes no bound parameters: quote as an SQL string literal.
    return "'" + key.replace("'", "''") + "'"


def _create_private(path: Path) -> None:
    """Create the data dir (0700) and an empty database file (0600) if missing.

    SQLite would create the file with 0644 (less the umask), and it gives
    the ``-wal`` and ``-shm`` files the database file's mode, so creating it
    private first keeps all three private.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as error:
        raise StorageError(f"cannot create database {path}: {error.strerror or error}") from None
    os.close(fd)


class _Database:
    """The synchronous part; only ever called on the storage thread."""

    def __init__(
        self,
        path: Path,
        key: str,
        migrations: tuple[Version, ...] = MIGRATIONS,
    ) -> None:
        self.path = path
        self.encrypted = bool(key)
        try:
            self.conn = sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False)
        except sqlcipher3.Error as error:
            raise StorageError(f"cannot open database {path}: {error}") from None
        try:
            # SQLCipher would log a wrong key on stderr; the error raised says it once.
            self.conn.execute("PRAGMA cipher_log_level = NONE")
            if key:
                # The key must be the first statement that touches the database.
                self.conn.execute(f"PRAGMA key = {_quote_key(key)}")
            self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlcipher3.DatabaseError:
            self.conn.close()
            hint = "db_key is wrong" if key else "the database is encrypted and db_key is empty"
            raise StorageError(f"cannot unlock database {path}: {hint}") from None
        try:
            self.conn.execute("PRAGMA journal_mode = WAL").fetchone()
            self.conn.execute("PRAGMA synchronous = FULL")
            self.conn.execute("PRAGMA secure_delete = ON")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute("PRAGMA busy_timeout = 5000")
            # Migration 4 keys the stored usernames by skeleton (8 keys them again).
            self.conn.create_function("qpq_username_key", 1, username_key, deterministic=True)
            migrate(self.transaction, migrations)
        except sqlcipher3.Error as error:
            self.conn.close()
            raise StorageError(f"cannot prepare database {path}: {error}") from None

    @contextmanager
    def transaction(self) -> Iterator[Txn]:
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield Txn(cur, SQLITE)
            # Inside the try: a COMMIT that fails (disk full, I/O error,
            # deferred constraint) must not leave the transaction open, or
            # every later BEGIN on this one connection fails for good.
            cur.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back by itself (SQLITE_FULL...).
            # If ROLLBACK fails too, the original error is the one to report.
            if self.conn.in_transaction:
                with contextlib.suppress(sqlcipher3.Error):
                    cur.execute("ROLLBACK")
            raise

    def run_batch(self, jobs: Sequence[Callable[[Txn], object]]) -> list[_Outcome]:
        """Run write jobs in one transaction, each in its own savepoint; COMMIT once.

        A job that raises is rolled back to its savepoint and gets its own
        error; the others go on. Returns each job's outcome once COMMIT has
        returned. If the COMMIT fails, or an error ends the whole transaction
        (SQLite rolls back by itself on some I/O errors), this raises and
        nothing of the batch is stored: every job must get that error.
        """
        outcomes: list[_Outcome] = []
        with self.transaction() as txn:
            for job in jobs:
                txn.execute("SAVEPOINT job")
                try:
                    value = job(txn)
                except Exception as error:
                    if not self.conn.in_transaction:
                        raise  # the batch's earlier work is gone too
                    txn.execute("ROLLBACK TO job")
                    outcomes.append((False, error))
                else:
                    outcomes.append((True, value))
                txn.execute("RELEASE job")
        return outcomes

    def read(self, op: Callable[[Txn], _T]) -> _T:
        """Run ``op`` outside any transaction, on a cursor of its own."""
        cur = self.conn.cursor()
        try:
            return op(Txn(cur, SQLITE))
        finally:
            # An unfinished statement would hold its read snapshot (and the WAL).
            cur.close()

    def close(self) -> None:
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self.conn.close()


class SqlCipherStorage(SqlStorage):
    """:class:`~qpq_server._storage.Storage` on an SQLCipher file.

    Use :meth:`open` (it runs on the storage thread and raises StorageError
    for a wrong key or an unusable file). Writes go through the storage
    thread's group commit: each call is one savepoint in a batch transaction
    and returns only after that transaction's COMMIT.
    """

    backend = "sqlcipher"
    # One thread writes, and settles its batches in order (StorageThread).
    ordered_commits = True

    def __init__(self, thread: StorageThread, database: _Database) -> None:
        self._thread = thread
        self._db = database
        self._closed = False
        if not database.encrypted:
            self.backend = "sqlite-plaintext"

    @classmethod
    async def open(
        cls, path: Path, key: str, *, budget_bytes: int = DEFAULT_BUDGET_BYTES
    ) -> SqlCipherStorage:
        """Open (creating if needed), unlock, tune and migrate the database.

        ``budget_bytes``: payload bytes of write calls that may wait for the
        storage thread at once; a call beyond it is refused with
        UnavailableError (see :class:`StorageThread`).
        """
        thread = StorageThread(budget_bytes=budget_bytes)
        try:
            _create_private(path)
            database = await thread.read(functools.partial(_Database, path, key))
        except BaseException:
            await thread.stop()
            raise
        thread.attach(database.run_batch, database.close)
        return cls(thread, database)

    async def _run(self, func: Callable[[], _T]) -> _T:
        """``func()`` on the storage thread, outside any transaction."""
        if self._closed:
            raise StorageError("the database is closed")
        return await self._thread.read(func)

    async def _read(self, op: Callable[[Txn], _T], *, snapshot: bool = False) -> _T:
        # One job of the only thread that writes: its statements see one state.
        return await self._run(functools.partial(self._db.read, op))

    async def _write(
        self, op: Callable[[Txn], _T], size: int = 0, then: Callable[[_T], None] | None = None
    ) -> _T:
        if self._closed:
            raise StorageError("the database is closed")
        return await self._thread.write(op, size, then)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._thread.stop()

    async def watch_deliveries(self, notifier: DeliveryNotifier) -> None:
        """Nothing to watch: only this process writes the file (it holds the key)."""
