"""The SQLCipher storage backend (``sqlcipher3``, bundled SQLCipher).

All database work runs on one dedicated thread (:mod:`._storage_thread`), so
the event loop never blocks on SQLite and the single connection is never
shared. Correctness does not rest on that: every write call runs in a
``BEGIN IMMEDIATE`` transaction, so claims and commit-epoch checks stay right
with any number of writers. Write calls queued together share one
transaction (each in its own savepoint, so one call's error undoes only that
call) and one COMMIT; ``synchronous=FULL`` in WAL mode makes that COMMIT
durable before any of the calls is acknowledged.

Each storage operation is written once, as a plain method holding its SQL,
marked a read or write job (:mod:`._sqlcipher_jobs`): the mark makes it
awaitable and runs it on the storage thread (a read on its own, a write as
one job of a batch, given that batch's cursor). The group operations live in
:mod:`._sqlcipher_groups`. :class:`_Database` owns the connection: opening,
migrations, the batch transaction.
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

from qpq_proto import Envelope
from qpq_proto.errors import AlreadyExistsError
from qpq_server._cleanup import EXPIRE_BATCH, expire, remove_unused
from qpq_server._errors import StorageError
from qpq_server._migrations import MIGRATIONS
from qpq_server._notifier import DeliveryNotifier
from qpq_server._ratelimit import RateBuckets
from qpq_server._rows import decode_endpoints, encode_endpoints, envelopes, key_package_limits
from qpq_server._sqlcipher_groups import GroupStore
from qpq_server._sqlcipher_jobs import read_job, write_job
from qpq_server._storage import (
    QueueStats,
    Retention,
    StoredEndpoints,
    StoredKeyPackage,
    Unused,
)
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
        migrations: tuple[tuple[int, str, tuple[str, ...]], ...] = MIGRATIONS,
    ) -> None:
        self.path = path
        self.encrypted = bool(key)
        try:
            self.conn = sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False)
        except sqlcipher3.Error as error:
            raise StorageError(f"cannot open database {path}: {error}") from None
        try:
            if key:
                # The key must be the first statement on the connection.
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
            # Migration 4 recomputes the stored username keys.
            self.conn.create_function("qpq_username_key", 1, username_key, deterministic=True)
            self._migrate(migrations)
        except sqlcipher3.Error as error:
            self.conn.close()
            raise StorageError(f"cannot prepare database {path}: {error}") from None

    def _migrate(self, migrations: tuple[tuple[int, str, tuple[str, ...]], ...]) -> None:
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
            "applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        )
        row = self.conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        current = int(row[0] or 0)
        latest = migrations[-1][0]
        if current > latest:
            raise StorageError(
                f"database schema version {current} is newer than this server ({latest})"
            )
        for version, description, statements in migrations:
            if version <= current:
                continue
            with self.transaction() as cur:
                for statement in statements:
                    cur.execute(statement)
                cur.execute(
                    "INSERT INTO schema_migrations (version, description) VALUES (?, ?)",
                    (version, description),
                )

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
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

    def run_batch(self, jobs: Sequence[Callable[[Any], object]]) -> list[_Outcome]:
        """Run write jobs in one transaction, each in its own savepoint; COMMIT once.

        A job that raises is rolled back to its savepoint and gets its own
        error; the others go on. Returns each job's outcome once COMMIT has
        returned. If the COMMIT fails, or an error ends the whole transaction
        (SQLite rolls back by itself on some I/O errors), this raises and
        nothing of the batch is stored: every job must get that error.
        """
        outcomes: list[_Outcome] = []
        with self.transaction() as cur:
            for job in jobs:
                cur.execute("SAVEPOINT job")
                try:
                    value = job(cur)
                except Exception as error:
                    if not self.conn.in_transaction:
                        raise  # the batch's earlier work is gone too
                    cur.execute("ROLLBACK TO job")
                    outcomes.append((False, error))
                else:
                    outcomes.append((True, value))
                cur.execute("RELEASE job")
        return outcomes

    def close(self) -> None:
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self.conn.close()


class SqlCipherStorage(GroupStore):
    """:class:`~qpq_server._storage.Storage` on an SQLCipher file.

    Use :meth:`open` (it runs on the storage thread and raises StorageError
    for a wrong key or an unusable file). Writes go through the storage
    thread's group commit: each call is one savepoint in a batch transaction
    and returns only after that transaction's COMMIT.
    """

    backend = "sqlcipher"
    #: One process serves a SQLCipher file: it keeps rate limits in memory.
    rate_buckets: RateBuckets | None = None

    def __init__(self, thread: StorageThread, database: _Database) -> None:
        self._thread = thread
        self._db = database
        #: Used only on the storage thread.
        self._conn = database.conn
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
        """A read, outside any transaction."""
        if self._closed:
            raise StorageError("the database is closed")
        return await self._thread.read(func)

    async def _write(self, func: Callable[[Any], _T], size: int = 0) -> _T:
        """A write job (``func(cursor)``), answered after its batch commits."""
        if self._closed:
            raise StorageError("the database is closed")
        return await self._thread.write(func, size)

    async def check(self) -> str:
        try:
            await self._select_one()
        except (sqlcipher3.Error, StorageError) as error:
            return f"unavailable: {error.__class__.__name__}"
        return "ok"

    @read_job
    def _select_one(self) -> None:
        self._conn.execute("SELECT 1").fetchone()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._thread.stop()

    async def watch_deliveries(self, notifier: DeliveryNotifier) -> None:
        """Nothing to watch: only this process writes the file (it holds the key)."""

    # ---- users ----------------------------------------------------------

    @write_job()
    def register_username(
        self,
        cur: Any,
        identity_key: bytes,
        username: str,
        key: str,
        *,
        now_ms: int,
        cooldown_ms: int,
    ) -> str:
        row = cur.execute(
            "SELECT identity_key FROM usernames WHERE username_key = ?", (key,)
        ).fetchone()
        if row is not None and bytes(row[0]) != identity_key:
            raise AlreadyExistsError("username is taken", field="username")
        if row is not None:
            found = cur.execute(
                "SELECT username FROM usernames WHERE identity_key = ?", (identity_key,)
            ).fetchone()
            return str(found[0])
        cur.execute("DELETE FROM username_holds WHERE released_at_ms <= ?", (now_ms - cooldown_ms,))
        held = cur.execute(
            "SELECT identity_key FROM username_holds WHERE username_key = ?", (key,)
        ).fetchone()
        if held is not None and bytes(held[0]) != identity_key:
            raise AlreadyExistsError(
                "username was given up recently and is still reserved for its owner",
                field="username",
            )
        self._hold_username(cur, identity_key, now_ms)
        cur.execute("DELETE FROM username_holds WHERE username_key = ?", (key,))
        cur.execute(
            "INSERT INTO usernames (identity_key, username, username_key) VALUES (?, ?, ?) "
            "ON CONFLICT (identity_key) DO UPDATE SET "
            "username = excluded.username, username_key = excluded.username_key",
            (identity_key, username, key),
        )
        return username

    @staticmethod
    def _hold_username(cur: Any, identity_key: bytes, now_ms: int) -> None:
        """Reserve the identity's current name, if any, for it (it is being given up)."""
        cur.execute(
            "INSERT OR REPLACE INTO username_holds (username_key, identity_key, released_at_ms) "
            "SELECT username_key, identity_key, ? FROM usernames WHERE identity_key = ?",
            (now_ms, identity_key),
        )

    @read_job
    def resolve_username(self, key: str) -> bytes | None:
        row = self._conn.execute(
            "SELECT identity_key FROM usernames WHERE username_key = ?", (key,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    @read_job
    def resolve_identity(self, identity_key: bytes) -> str | None:
        row = self._conn.execute(
            "SELECT username FROM usernames WHERE identity_key = ?", (identity_key,)
        ).fetchone()
        return None if row is None else str(row[0])

    # ---- key directory --------------------------------------------------

    @write_job(payload="packages")
    def add_key_packages(
        self,
        cur: Any,
        identity_key: bytes,
        packages: list[StoredKeyPackage],
        max_stored: int,
        max_bytes: int,
    ) -> None:
        stored, stored_bytes = cur.execute(
            "SELECT count(*), coalesce(sum(length(package)), 0) FROM key_packages "
            "WHERE identity_key = ?",
            (identity_key,),
        ).fetchone()
        key_package_limits(
            stored, stored_bytes, [p.package for p in packages], max_stored, max_bytes
        )
        cur.executemany(
            "INSERT INTO key_packages (identity_key, package, fingerprint, not_after) "
            "VALUES (?, ?, ?, ?)",
            [(identity_key, p.package, p.fingerprint, p.not_after) for p in packages],
        )

    @write_job(payload="package")
    def set_last_resort(self, cur: Any, identity_key: bytes, package: StoredKeyPackage) -> None:
        cur.execute(
            "INSERT INTO last_resort (identity_key, package, fingerprint, not_after) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (identity_key) DO UPDATE SET "
            "package = excluded.package, fingerprint = excluded.fingerprint, "
            "not_after = excluded.not_after",
            (identity_key, package.package, package.fingerprint, package.not_after),
        )

    @write_job()
    def claim_key_package(self, cur: Any, identity_key: bytes, now_s: int) -> bytes | None:
        # Select and delete in one statement inside one write transaction:
        # two claims can never return the same row.
        row = cur.execute(
            "DELETE FROM key_packages WHERE id = ("
            "SELECT id FROM key_packages WHERE identity_key = ? AND not_after > ? "
            "ORDER BY id LIMIT 1) RETURNING package",
            (identity_key, now_s),
        ).fetchone()
        if row is not None:
            return bytes(row[0])
        row = cur.execute(
            "SELECT package FROM last_resort WHERE identity_key = ? AND not_after > ?",
            (identity_key, now_s),
        ).fetchone()
        return None if row is None else bytes(row[0])

    @read_job
    def count_key_packages(self, identity_key: bytes, now_s: int) -> tuple[int, bool]:
        (count,) = self._conn.execute(
            "SELECT count(*) FROM key_packages WHERE identity_key = ? AND not_after > ?",
            (identity_key, now_s),
        ).fetchone()
        row = self._conn.execute(
            "SELECT 1 FROM last_resort WHERE identity_key = ? AND not_after > ?",
            (identity_key, now_s),
        ).fetchone()
        return int(count), row is not None

    # ---- delivery -------------------------------------------------------

    @read_job
    def fetch(
        self, recipient: bytes, *, after_seq: int, limit: int, max_bytes: int, now_ms: int
    ) -> list[Envelope]:
        cursor = self._conn.execute(
            "SELECT d.seq, p.sender, p.payload, p.enqueued_at_ms, p.gap "
            "FROM deliveries AS d JOIN payloads AS p ON p.id = d.payload_id "
            "WHERE d.recipient = ? AND d.seq > ? AND d.expires_at_ms > ? ORDER BY d.seq LIMIT ?",
            (recipient, after_seq, now_ms, limit),
        )
        found = envelopes(cursor, max_bytes)
        cursor.close()
        return found

    @write_job()
    def ack(self, cur: Any, recipient: bytes, up_to_seq: int) -> int:
        removed = cur.execute(
            "DELETE FROM deliveries WHERE recipient = ? AND seq <= ?", (recipient, up_to_seq)
        ).rowcount
        if removed:
            cur.execute(
                "UPDATE queues SET depth = max(0, depth - ?) WHERE recipient = ?",
                (removed, recipient),
            )
        return int(removed)

    # ---- endpoints and accounts ------------------------------------------

    @write_job()
    def publish_endpoints(
        self, cur: Any, identity_key: bytes, endpoints: StoredEndpoints, now_ms: int
    ) -> None:
        cur.execute(
            "INSERT INTO endpoints (identity_key, endpoints, observed_host, observed_port, "
            "updated_at_ms) VALUES (?, ?, ?, ?, ?) ON CONFLICT (identity_key) DO UPDATE SET "
            "endpoints = excluded.endpoints, observed_host = excluded.observed_host, "
            "observed_port = excluded.observed_port, updated_at_ms = excluded.updated_at_ms",
            (identity_key, *encode_endpoints(endpoints), now_ms),
        )

    @read_job
    def resolve_endpoints(self, identity_key: bytes) -> StoredEndpoints | None:
        row = self._conn.execute(
            "SELECT endpoints, observed_host, observed_port FROM endpoints WHERE identity_key = ?",
            (identity_key,),
        ).fetchone()
        return None if row is None else decode_endpoints(row)

    @write_job()
    def delete_account(self, cur: Any, identity_key: bytes, *, now_ms: int) -> None:
        self._hold_username(cur, identity_key, now_ms)
        cur.execute("DELETE FROM deliveries WHERE recipient = ?", (identity_key,))
        cur.execute("UPDATE queues SET depth = 0 WHERE recipient = ?", (identity_key,))
        cur.execute("DELETE FROM key_packages WHERE identity_key = ?", (identity_key,))
        cur.execute("DELETE FROM last_resort WHERE identity_key = ?", (identity_key,))
        cur.execute("DELETE FROM usernames WHERE identity_key = ?", (identity_key,))
        cur.execute("DELETE FROM endpoints WHERE identity_key = ?", (identity_key,))

    # ---- maintenance ----------------------------------------------------

    @write_job()
    def _expire_messages_batch(self, cur: Any, now_ms: int) -> int:
        rows = cur.execute(
            "DELETE FROM deliveries WHERE (recipient, seq) IN (SELECT recipient, seq "
            "FROM deliveries WHERE expires_at_ms <= ? LIMIT ?) RETURNING recipient",
            (now_ms, EXPIRE_BATCH),
        ).fetchall()
        per_recipient: dict[bytes, int] = {}
        for (recipient,) in rows:
            per_recipient[bytes(recipient)] = per_recipient.get(bytes(recipient), 0) + 1
        cur.executemany(
            "UPDATE queues SET depth = max(0, depth - ?) WHERE recipient = ?",
            [(count, recipient) for recipient, count in per_recipient.items()],
        )
        return len(rows)

    @write_job()
    def _expire_key_packages_batch(self, cur: Any, now_s: int) -> int:
        removed = cur.execute(
            "DELETE FROM key_packages WHERE id IN "
            "(SELECT id FROM key_packages WHERE not_after <= ? LIMIT ?)",
            (now_s, EXPIRE_BATCH),
        ).rowcount
        if removed < EXPIRE_BATCH:
            removed += cur.execute(
                "DELETE FROM last_resort WHERE identity_key IN "
                "(SELECT identity_key FROM last_resort WHERE not_after <= ? LIMIT ?)",
                (now_s, EXPIRE_BATCH - removed),
            ).rowcount
        return int(removed)

    @write_job()
    def _remove_idle_queues(self, cur: Any, below_seq: int) -> int:
        # The condition is checked again by the DELETE itself, in the same
        # transaction as any enqueue that could make the row busy again.
        return int(
            cur.execute(
                "DELETE FROM queues WHERE recipient IN (SELECT recipient FROM queues "
                "WHERE depth = 0 AND last_seq < ? LIMIT ?) AND depth = 0 AND last_seq < ?",
                (below_seq, EXPIRE_BATCH, below_seq),
            ).rowcount
        )

    @write_job()
    def _remove_old_endpoints(self, cur: Any, before_ms: int) -> int:
        return int(
            cur.execute(
                "DELETE FROM endpoints WHERE identity_key IN (SELECT identity_key FROM endpoints "
                "WHERE updated_at_ms < ? LIMIT ?)",
                (before_ms, EXPIRE_BATCH),
            ).rowcount
        )

    @write_job()
    def _remove_released_usernames(self, cur: Any, before_ms: int) -> int:
        return int(
            cur.execute(
                "DELETE FROM username_holds WHERE username_key IN (SELECT username_key "
                "FROM username_holds WHERE released_at_ms <= ? LIMIT ?)",
                (before_ms, EXPIRE_BATCH),
            ).rowcount
        )

    @read_job
    def queue_stats(self) -> QueueStats:
        queues, messages, max_depth = self._conn.execute(
            "SELECT count(*), coalesce(sum(depth), 0), coalesce(max(depth), 0) FROM queues "
            "WHERE depth > 0"
        ).fetchone()
        return QueueStats(queues=int(queues), messages=int(messages), max_depth=int(max_depth))

    async def expire(self, *, now_ms: int, now_s: int) -> tuple[int, int]:
        return await expire(self, now_ms=now_ms, now_s=now_s)

    async def remove_unused(self, *, now_ms: int, retention: Retention) -> Unused:
        return await remove_unused(self, now_ms=now_ms, retention=retention)
