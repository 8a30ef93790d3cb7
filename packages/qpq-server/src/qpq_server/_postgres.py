"""The PostgreSQL storage backend (psycopg 3, asyncio, a connection pool).

Several qpq-server nodes may share one database: every guarantee of
:class:`~qpq_server._storage.Storage` is kept by PostgreSQL itself, never by
one process being the only writer. Each call is one transaction on a pooled
connection (READ COMMITTED) whose correctness rests on row locks and
conditional updates (see :mod:`._postgres_groups`): a single-use KeyPackage
is claimed with ``FOR UPDATE SKIP LOCKED`` and deleted in the same statement,
a commit moves the group's epoch only from the epoch it was verified
against, a seq is bumped under its queue row's lock. A transaction that
PostgreSQL aborts as a deadlock or serialization failure, or that loses a
race to insert the same unique key, is run again from the start; a call
returns only after COMMIT, which with PostgreSQL's default
``synchronous_commit = on`` is durable on the database host.

Stored deliveries are announced with ``pg_notify`` inside their
transaction; :meth:`PostgresStorage.watch_deliveries` LISTENs on a
dedicated connection and wakes this node's fetchWait and subscribe calls,
whichever node stored the message.

The database URL is a secret (it may hold a password): only
:func:`~qpq_server._database_url.redact_url` of it ever appears in a message.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection, errors
from psycopg_pool import AsyncConnectionPool

from qpq_core import ChangeSet
from qpq_proto import Envelope
from qpq_proto.errors import (
    AlreadyExistsError,
    UnavailableError,
)
from qpq_server._cleanup import EXPIRE_BATCH, expire, remove_unused
from qpq_server._database_url import redact_url, scrub
from qpq_server._errors import StorageError
from qpq_server._logging import get_logger
from qpq_server._migrations import POSTGRES_MIGRATIONS
from qpq_server._notifier import DeliveryNotifier
from qpq_server._postgres_groups import DELIVERY_CHANNEL, Cursor, PostgresGroups
from qpq_server._ratelimit import RateBuckets, debit_tokens, take_tokens
from qpq_server._rows import decode_endpoints, encode_endpoints, envelopes, key_package_limits
from qpq_server._storage import (
    Delivered,
    Delivery,
    GroupUpdate,
    QueueStats,
    Retention,
    StoredEndpoints,
    StoredKeyPackage,
    Unused,
)
from qpq_server._storage_thread import DEFAULT_BUDGET_BYTES

__all__ = ["DEFAULT_POOL_SIZE", "PostgresStorage"]

_T = TypeVar("_T")
_log = get_logger()

#: Connections one node keeps to the database at most (besides its listener).
DEFAULT_POOL_SIZE = 10
#: Runs of one transaction before its deadlock or serialization failure is reported.
_ATTEMPTS = 8
#: Serializes schema migrations of nodes starting at once (an arbitrary constant key).
_MIGRATION_LOCK = 0x717071
#: Seconds between attempts to get the listener connection back.
_LISTEN_RETRY_SECONDS = 1.0
_CONNECT_TIMEOUT_SECONDS = 10


class PostgresStorage(PostgresGroups):
    """:class:`~qpq_server._storage.Storage` on a PostgreSQL database shared by any number of nodes.

    Use :meth:`open`: it connects, migrates the schema (one node at a time)
    and opens the pool; StorageError (naming the redacted URL) when the
    database cannot be used.
    """

    backend = "postgresql"

    def __init__(self, pool: AsyncConnectionPool[Any], url: str, budget_bytes: int) -> None:
        self._pool = pool
        self._url = url
        self._budget = budget_bytes
        #: Payload bytes of the write calls now running (the storage budget).
        self.pending_bytes = 0
        self._closed = False
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
        try:
            conn = await AsyncConnection.connect(
                url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_SECONDS
            )
        except psycopg.Error as error:
            raise StorageError(
                f"cannot connect to database {redact_url(url)}: {scrub(str(error).strip(), url)}"
            ) from None
        try:
            async with conn:
                await _migrate(conn)
                await _warn_if_not_durable(conn)
        except psycopg.Error as error:
            raise StorageError(
                f"cannot prepare database {redact_url(url)}: {scrub(str(error).strip(), url)}"
            ) from None
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "connect_timeout": _CONNECT_TIMEOUT_SECONDS},
            open=False,
            name="qpq",
        )
        try:
            await pool.open(wait=True, timeout=_CONNECT_TIMEOUT_SECONDS)
        except psycopg.Error as error:
            await pool.close()
            raise StorageError(
                f"cannot connect to database {redact_url(url)}: {scrub(str(error).strip(), url)}"
            ) from None
        return cls(pool, url, budget_bytes)

    # ---- transactions ----------------------------------------------------

    async def _transaction(
        self,
        body: Callable[[Cursor], Awaitable[_T]],
        *,
        size: int = 0,
        snapshot: bool = False,
        single: bool = False,
    ) -> _T:
        """Run ``body(cursor)`` in one transaction, again from the start if PostgreSQL
        aborts it for a concurrent one; return after COMMIT.

        ``size`` counts against the write budget while the call runs;
        ``snapshot`` makes every statement see one snapshot (a read of
        several tables that must agree); ``single`` runs a body of one
        statement as it is (a statement is a transaction of its own).
        """
        if self._closed:
            raise StorageError("the database is closed")
        if size:
            if self.pending_bytes and self.pending_bytes + size > self._budget:
                raise UnavailableError(
                    "the server has more waiting to be stored than it may hold; retry later"
                )
            self.pending_bytes += size
        attempt = 0
        try:
            while True:
                attempt += 1
                try:
                    async with self._pool.connection() as conn:
                        if single:
                            return await body(conn.cursor())
                        async with conn.transaction():
                            cur = conn.cursor()
                            if snapshot:
                                await cur.execute(
                                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"
                                )
                            return await body(cur)
                except (
                    errors.SerializationFailure,
                    errors.DeadlockDetected,
                    errors.UniqueViolation,
                ):
                    # A unique key inserted concurrently: the next run sees it
                    # and answers as for any existing row.
                    if attempt == _ATTEMPTS:
                        raise
                except psycopg.OperationalError as error:
                    _log.warning("database unavailable: %s", scrub(str(error).strip(), self._url))
                    raise UnavailableError("the database is unavailable; retry later") from None
        finally:
            if size:
                self.pending_bytes -= size

    async def check(self) -> str:
        if self._closed:
            return "unavailable: StorageError"
        try:
            async with self._pool.connection(timeout=_CONNECT_TIMEOUT_SECONDS) as conn:
                await conn.execute("SELECT 1")
        except psycopg.Error as error:
            return f"unavailable: {error.__class__.__name__}"
        return "ok"

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self._pool.close()

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
                conn = await AsyncConnection.connect(
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

    # ---- users ----------------------------------------------------------

    async def register_username(
        self, identity_key: bytes, username: str, key: str, *, now_ms: int, cooldown_ms: int
    ) -> str:
        async def body(cur: Cursor) -> str:
            await cur.execute(
                "SELECT identity_key FROM usernames WHERE username_key = %s FOR UPDATE", (key,)
            )
            row = await cur.fetchone()
            if row is not None and bytes(row[0]) != identity_key:
                raise AlreadyExistsError("username is taken", field="username")
            if row is not None:
                await cur.execute(
                    "SELECT username FROM usernames WHERE identity_key = %s", (identity_key,)
                )
                found = await cur.fetchone()
                return str(found[0]) if found is not None else username
            await cur.execute(
                "DELETE FROM username_holds WHERE released_at_ms <= %s", (now_ms - cooldown_ms,)
            )
            await cur.execute(
                "SELECT identity_key FROM username_holds WHERE username_key = %s", (key,)
            )
            held = await cur.fetchone()
            if held is not None and bytes(held[0]) != identity_key:
                raise AlreadyExistsError(
                    "username was given up recently and is still reserved for its owner",
                    field="username",
                )
            await _hold_username(cur, identity_key, now_ms)
            await cur.execute("DELETE FROM username_holds WHERE username_key = %s", (key,))
            await cur.execute(
                "INSERT INTO usernames (identity_key, username, username_key) "
                "VALUES (%s, %s, %s) ON CONFLICT (identity_key) DO UPDATE SET "
                "username = excluded.username, username_key = excluded.username_key",
                (identity_key, username, key),
            )
            return username

        return await self._transaction(body)

    async def resolve_username(self, key: str) -> bytes | None:
        row = await self._read_one(
            "SELECT identity_key FROM usernames WHERE username_key = %s", key
        )
        return None if row is None else bytes(row[0])

    async def resolve_identity(self, identity_key: bytes) -> str | None:
        row = await self._read_one(
            "SELECT username FROM usernames WHERE identity_key = %s", identity_key
        )
        return None if row is None else str(row[0])

    async def _read_one(self, query: str, *params: Any) -> tuple[Any, ...] | None:
        async def body(cur: Cursor) -> tuple[Any, ...] | None:
            await cur.execute(query, params)
            return await cur.fetchone()

        return await self._transaction(body, single=True)

    # ---- key directory --------------------------------------------------

    async def add_key_packages(
        self,
        identity_key: bytes,
        packages: list[StoredKeyPackage],
        max_stored: int,
        max_bytes: int,
    ) -> None:
        async def body(cur: Cursor) -> None:
            # The identity's last-resort row (or none) is no lock to count under;
            # the count may be passed by one concurrent upload's worth (see Storage).
            await cur.execute(
                "SELECT count(*), coalesce(sum(length(package)), 0) FROM key_packages "
                "WHERE identity_key = %s",
                (identity_key,),
            )
            row = await cur.fetchone()
            stored, stored_bytes = (int(row[0]), int(row[1])) if row is not None else (0, 0)
            key_package_limits(
                stored, stored_bytes, [p.package for p in packages], max_stored, max_bytes
            )
            await cur.executemany(
                "INSERT INTO key_packages (identity_key, package, fingerprint, not_after) "
                "VALUES (%s, %s, %s, %s)",
                [(identity_key, p.package, p.fingerprint, p.not_after) for p in packages],
            )

        await self._transaction(body, size=sum(len(p.package) for p in packages))

    async def set_last_resort(self, identity_key: bytes, package: StoredKeyPackage) -> None:
        async def body(cur: Cursor) -> None:
            await cur.execute(
                "INSERT INTO last_resort (identity_key, package, fingerprint, not_after) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (identity_key) DO UPDATE SET "
                "package = excluded.package, fingerprint = excluded.fingerprint, "
                "not_after = excluded.not_after",
                (identity_key, package.package, package.fingerprint, package.not_after),
            )

        await self._transaction(body, size=len(package.package))

    async def claim_key_package(self, identity_key: bytes, now_s: int) -> bytes | None:
        async def body(cur: Cursor) -> bytes | None:
            # A row another claim holds is skipped, not waited for: two claims
            # never return the same package, and neither blocks the other.
            await cur.execute(
                "DELETE FROM key_packages WHERE id = ("
                "SELECT id FROM key_packages WHERE identity_key = %s AND not_after > %s "
                "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING package",
                (identity_key, now_s),
            )
            row = await cur.fetchone()
            if row is not None:
                return bytes(row[0])
            await cur.execute(
                "SELECT package FROM last_resort WHERE identity_key = %s AND not_after > %s",
                (identity_key, now_s),
            )
            row = await cur.fetchone()
            return None if row is None else bytes(row[0])

        return await self._transaction(body)

    async def count_key_packages(self, identity_key: bytes, now_s: int) -> tuple[int, bool]:
        async def body(cur: Cursor) -> tuple[int, bool]:
            await cur.execute(
                "SELECT (SELECT count(*) FROM key_packages WHERE identity_key = %s "
                "AND not_after > %s), EXISTS (SELECT 1 FROM last_resort "
                "WHERE identity_key = %s AND not_after > %s)",
                (identity_key, now_s, identity_key, now_s),
            )
            row = await cur.fetchone()
            return (0, False) if row is None else (int(row[0]), bool(row[1]))

        return await self._transaction(body, single=True)

    # ---- groups ---------------------------------------------------------

    async def create_group(
        self,
        group_id: bytes,
        *,
        creator: bytes,
        epoch: int,
        members: tuple[bytes, ...],
        state: ChangeSet,
        group_info: bytes,
        now_ms: int,
        max_created: int,
    ) -> None:
        async def body(cur: Cursor) -> None:
            await self.create_group_tx(
                cur,
                group_id,
                creator=creator,
                epoch=epoch,
                members=members,
                state=state,
                group_info=group_info,
                now_ms=now_ms,
                max_created=max_created,
            )

        await self._transaction(body, size=len(group_info))

    async def group_epoch(self, group_id: bytes) -> int | None:
        row = await self._read_one("SELECT epoch FROM groups WHERE group_id = %s", group_id)
        return None if row is None else int(row[0])

    async def group_state(self, group_id: bytes) -> tuple[int, list[tuple[bytes, bytes]]] | None:
        return await self._transaction(
            lambda cur: self.group_state_tx(cur, group_id), snapshot=True
        )

    async def group_info(self, group_id: bytes) -> tuple[int, bytes] | None:
        row = await self._read_one(
            "SELECT epoch, group_info FROM groups WHERE group_id = %s", group_id
        )
        return None if row is None else (int(row[0]), bytes(row[1]))

    async def group_members(self, group_id: bytes) -> tuple[bytes, ...] | None:
        return await self._transaction(
            lambda cur: self.group_members_tx(cur, group_id), snapshot=True
        )

    async def accepted_commit(self, group_id: bytes, epoch: int) -> bytes | None:
        row = await self._read_one(
            "SELECT commit_hash FROM group_commits WHERE group_id = %s AND epoch = %s",
            group_id,
            epoch,
        )
        return None if row is None else bytes(row[0])

    async def send_application(
        self, group_id: bytes, *, epoch: int, oldest_epoch: int, delivery: Delivery
    ) -> tuple[int, Delivered]:
        return await self._transaction(
            lambda cur: self.send_application_tx(
                cur, group_id, epoch=epoch, oldest_epoch=oldest_epoch, delivery=delivery
            ),
            size=len(delivery.payload),
        )

    async def apply_group_update(
        self,
        group_id: bytes,
        update: GroupUpdate,
        *,
        recipients: tuple[bytes, ...],
        delivery: Delivery,
        welcome: tuple[bytes, tuple[bytes, ...]] | None = None,
    ) -> Delivered:
        return await self._transaction(
            lambda cur: self.apply_group_update_tx(
                cur, group_id, update, recipients=recipients, delivery=delivery, welcome=welcome
            ),
            size=len(delivery.payload),
        )

    # ---- delivery -------------------------------------------------------

    async def fetch(
        self, recipient: bytes, *, after_seq: int, limit: int, max_bytes: int, now_ms: int
    ) -> list[Envelope]:
        async def body(cur: Cursor) -> list[Envelope]:
            await cur.execute(
                "SELECT d.seq, p.sender, p.payload, p.enqueued_at_ms, p.gap "
                "FROM deliveries AS d JOIN payloads AS p ON p.id = d.payload_id "
                "WHERE d.recipient = %s AND d.seq > %s AND d.expires_at_ms > %s "
                "ORDER BY d.seq LIMIT %s",
                (recipient, after_seq, now_ms, limit),
            )
            return envelopes(await cur.fetchall(), max_bytes)

        return await self._transaction(body, single=True)

    async def ack(self, recipient: bytes, up_to_seq: int) -> int:
        async def body(cur: Cursor) -> int:
            # The queue row first, as every writer of this queue locks it.
            await cur.execute("SELECT 1 FROM queues WHERE recipient = %s FOR UPDATE", (recipient,))
            await cur.execute(
                "DELETE FROM deliveries WHERE recipient = %s AND seq <= %s",
                (recipient, up_to_seq),
            )
            removed = cur.rowcount
            if removed:
                await cur.execute(
                    "UPDATE queues SET depth = greatest(0, depth - %s) WHERE recipient = %s",
                    (removed, recipient),
                )
            return int(removed)

        return await self._transaction(body)

    # ---- endpoints and accounts ------------------------------------------

    async def publish_endpoints(
        self, identity_key: bytes, endpoints: StoredEndpoints, now_ms: int
    ) -> None:
        async def body(cur: Cursor) -> None:
            await cur.execute(
                "INSERT INTO endpoints (identity_key, endpoints, observed_host, observed_port, "
                "updated_at_ms) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (identity_key) DO UPDATE "
                "SET endpoints = excluded.endpoints, observed_host = excluded.observed_host, "
                "observed_port = excluded.observed_port, updated_at_ms = excluded.updated_at_ms",
                (identity_key, *encode_endpoints(endpoints), now_ms),
            )

        await self._transaction(body)

    async def resolve_endpoints(self, identity_key: bytes) -> StoredEndpoints | None:
        row = await self._read_one(
            "SELECT endpoints, observed_host, observed_port FROM endpoints WHERE identity_key = %s",
            identity_key,
        )
        return None if row is None else decode_endpoints(row)

    async def delete_account(self, identity_key: bytes, *, now_ms: int) -> None:
        async def body(cur: Cursor) -> None:
            await _hold_username(cur, identity_key, now_ms)
            await cur.execute(
                "SELECT 1 FROM queues WHERE recipient = %s FOR UPDATE", (identity_key,)
            )
            await cur.execute("DELETE FROM deliveries WHERE recipient = %s", (identity_key,))
            await cur.execute("UPDATE queues SET depth = 0 WHERE recipient = %s", (identity_key,))
            for table in ("key_packages", "last_resort", "usernames", "endpoints"):
                await cur.execute(
                    f"DELETE FROM {table} WHERE identity_key = %s",  # noqa: S608 - fixed names
                    (identity_key,),
                )

        await self._transaction(body)

    # ---- maintenance ----------------------------------------------------

    async def _expire_messages_batch(self, now_ms: int) -> int:
        async def body(cur: Cursor) -> int:
            # Rows a fan-out or ack holds are left for the next round.
            await cur.execute(
                "DELETE FROM deliveries WHERE (recipient, seq) IN (SELECT recipient, seq "
                "FROM deliveries WHERE expires_at_ms <= %s ORDER BY recipient, seq LIMIT %s "
                "FOR UPDATE SKIP LOCKED) RETURNING recipient",
                (now_ms, EXPIRE_BATCH),
            )
            rows = await cur.fetchall()
            per_recipient: dict[bytes, int] = {}
            for (recipient,) in rows:
                per_recipient[bytes(recipient)] = per_recipient.get(bytes(recipient), 0) + 1
            for recipient in sorted(per_recipient):
                await cur.execute(
                    "UPDATE queues SET depth = greatest(0, depth - %s) WHERE recipient = %s",
                    (per_recipient[recipient], recipient),
                )
            return len(rows)

        return await self._transaction(body)

    async def _expire_key_packages_batch(self, now_s: int) -> int:
        async def body(cur: Cursor) -> int:
            await cur.execute(
                "DELETE FROM key_packages WHERE id IN (SELECT id FROM key_packages "
                "WHERE not_after <= %s LIMIT %s FOR UPDATE SKIP LOCKED)",
                (now_s, EXPIRE_BATCH),
            )
            removed = cur.rowcount
            if removed < EXPIRE_BATCH:
                await cur.execute(
                    "DELETE FROM last_resort WHERE identity_key IN (SELECT identity_key "
                    "FROM last_resort WHERE not_after <= %s LIMIT %s FOR UPDATE SKIP LOCKED)",
                    (now_s, EXPIRE_BATCH - removed),
                )
                removed += cur.rowcount
            return int(removed)

        return await self._transaction(body)

    async def _remove_idle_queues(self, below_seq: int) -> int:
        async def body(cur: Cursor) -> int:
            # The condition is checked again by the DELETE on the row as it is
            # then: a fan-out that holds or refilled the row keeps it.
            await cur.execute(
                "DELETE FROM queues WHERE recipient IN (SELECT recipient FROM queues "
                "WHERE depth = 0 AND last_seq < %s LIMIT %s FOR UPDATE SKIP LOCKED) "
                "AND depth = 0 AND last_seq < %s",
                (below_seq, EXPIRE_BATCH, below_seq),
            )
            return int(cur.rowcount)

        return await self._transaction(body)

    async def _remove_old_endpoints(self, before_ms: int) -> int:
        return await self._delete_batch(
            "DELETE FROM endpoints WHERE identity_key IN (SELECT identity_key FROM endpoints "
            "WHERE updated_at_ms < %s LIMIT %s FOR UPDATE SKIP LOCKED)",
            before_ms,
        )

    async def _remove_released_usernames(self, before_ms: int) -> int:
        return await self._delete_batch(
            "DELETE FROM username_holds WHERE username_key IN (SELECT username_key "
            "FROM username_holds WHERE released_at_ms <= %s LIMIT %s FOR UPDATE SKIP LOCKED)",
            before_ms,
        )

    async def _remove_unused_groups(self, used_before_ms: int) -> int:
        return await self._transaction(
            lambda cur: self.remove_unused_groups_tx(cur, used_before_ms)
        )

    async def _delete_batch(self, query: str, bound: int) -> int:
        async def body(cur: Cursor) -> int:
            await cur.execute(query, (bound, EXPIRE_BATCH))
            return int(cur.rowcount)

        return await self._transaction(body, single=True)

    # ---- rate limits shared by the nodes ----------------------------------

    async def take_rate_tokens(
        self, key: bytes, want: float, rate: float, capacity: float
    ) -> float:
        async def body(cur: Cursor) -> float:
            now, full_at = await self._lock_bucket(cur, key)
            granted, full_at_after = take_tokens(full_at, now, want, rate, capacity)
            if granted:
                await _store_bucket(cur, key, full_at, full_at_after)
            return granted

        return await self._transaction(body)

    async def debit_rate_tokens(
        self, key: bytes, cost: float, rate: float, capacity: float
    ) -> None:
        async def body(cur: Cursor) -> None:
            now, full_at = await self._lock_bucket(cur, key)
            await _store_bucket(cur, key, full_at, debit_tokens(full_at, now, cost, rate, capacity))

        await self._transaction(body)

    @staticmethod
    async def _lock_bucket(cur: Cursor, key: bytes) -> tuple[float, float | None]:
        """The database's clock and the bucket's ``full_at``, its row locked till COMMIT.

        Every node reads the one clock of the database, so skew between the
        nodes' clocks cannot refill a bucket early.
        """
        await cur.execute(
            "SELECT extract(epoch FROM clock_timestamp())::float8, "
            "(SELECT full_at FROM rate_limits WHERE identity_key = %s FOR UPDATE)",
            (key,),
        )
        now, full_at = await cur.fetchone() or (None, None)
        return float(now), None if full_at is None else float(full_at)

    async def _remove_full_rate_limits(self) -> int:
        """One batch of buckets that are full again (no row means a full bucket)."""

        async def body(cur: Cursor) -> int:
            await cur.execute(
                "DELETE FROM rate_limits WHERE identity_key IN (SELECT identity_key "
                "FROM rate_limits WHERE full_at < extract(epoch FROM clock_timestamp()) "
                "LIMIT %s FOR UPDATE SKIP LOCKED) "
                "AND full_at < extract(epoch FROM clock_timestamp())",
                (EXPIRE_BATCH,),
            )
            return int(cur.rowcount)

        return await self._transaction(body, single=True)

    async def queue_stats(self) -> QueueStats:
        row = await self._read_one(
            "SELECT count(*), coalesce(sum(depth), 0), coalesce(max(depth), 0) FROM queues "
            "WHERE depth > 0"
        )
        if row is None:
            return QueueStats(queues=0, messages=0, max_depth=0)
        return QueueStats(queues=int(row[0]), messages=int(row[1]), max_depth=int(row[2]))

    async def expire(self, *, now_ms: int, now_s: int) -> tuple[int, int]:
        return await expire(self, now_ms=now_ms, now_s=now_s)

    async def remove_unused(self, *, now_ms: int, retention: Retention) -> Unused:
        unused = await remove_unused(self, now_ms=now_ms, retention=retention)
        removed = 0
        while (batch := await self._remove_full_rate_limits()) == EXPIRE_BATCH:
            removed += batch
        return dataclasses.replace(unused, rate_limits=removed + batch)


async def _store_bucket(cur: Cursor, key: bytes, full_at: float | None, after: float) -> None:
    """Write a bucket read by ``_lock_bucket``: a new row where there was none.

    Two nodes that both found no row both INSERT: one fails on the primary
    key and its transaction runs again, then finding the other's row.
    """
    if full_at is None:
        await cur.execute(
            "INSERT INTO rate_limits (identity_key, full_at) VALUES (%s, %s)", (key, after)
        )
    else:
        await cur.execute(
            "UPDATE rate_limits SET full_at = %s WHERE identity_key = %s", (after, key)
        )


async def _hold_username(cur: Cursor, identity_key: bytes, now_ms: int) -> None:
    """Reserve the identity's current name, if any, for it (it is being given up)."""
    await cur.execute(
        "INSERT INTO username_holds (username_key, identity_key, released_at_ms) "
        "SELECT username_key, identity_key, %s FROM usernames WHERE identity_key = %s "
        "ON CONFLICT (username_key) DO UPDATE SET identity_key = excluded.identity_key, "
        "released_at_ms = excluded.released_at_ms",
        (now_ms, identity_key),
    )


async def _warn_if_not_durable(conn: AsyncConnection[Any]) -> None:
    """Say so loudly when the database may lose what it acknowledged in a crash.

    A call is answered after COMMIT; with ``fsync`` or ``synchronous_commit``
    off, PostgreSQL answers COMMIT before the WAL is on disk.
    """
    for setting in ("fsync", "synchronous_commit"):
        cur = await conn.execute("SELECT setting FROM pg_settings WHERE name = %s", (setting,))
        row = await cur.fetchone()
        if row is not None and str(row[0]) == "off":
            _log.warning(
                "database has %s = off: messages acknowledged to clients can be lost "
                "if the database host crashes",
                setting,
            )


async def _migrate(conn: AsyncConnection[Any]) -> None:
    """Apply each migration above the stored version, one transaction each.

    Nodes starting together take turns: the advisory lock is held for each
    transaction, and the stored version is read again under it.
    """
    latest = POSTGRES_MIGRATIONS[-1][0]
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
    for version, description, statements in POSTGRES_MIGRATIONS:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            row = await cur.fetchone()
            current = int(row[0]) if row is not None else 0
            if current > latest:
                raise StorageError(
                    f"database schema version {current} is newer than this server ({latest})"
                )
            if version <= current:
                continue
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                (version, description),
            )
