"""The encrypted local state: one SQLCipher database per profile.

Everything a client knows lives here: its identity seed, its settings
(server, trust, token, invite policy), the MLS key-value rows qpq-core hands
out as change sets, groups, history, the outbox of messages not yet accepted
by the server, the last processed and acknowledged server seq, the people
it knows (pinned keys, contacts, blocks), and invitations held as requests
with their groups' messages. The schema and its migrations are in
:mod:`qpq_client._schema`, the rows it hands out in :mod:`qpq_client._rows`,
the reads and writes of each kind of row in ``_state_groups`` (groups and
history), ``_state_outbox`` (outbox, queue cursor, seen digests),
``_state_people`` (contacts, blocks, pins), ``_state_requests``
(invitations held as requests, and their messages) and ``_state_backup``
(the rows a profile backup carries).
The database file is encrypted with the profile passphrase (SQLCipher), the
directory is 0700, the files 0600,
deleted pages are overwritten (``secure_delete``) and the WAL is truncated
on close, so forward secrecy is not undone by the disk.

Each MLS operation's change set and the application rows that go with it
are written in ONE transaction (:meth:`StateStore.transaction`); if it fails
nothing of it is kept, and the caller reloads the MLS client from
:meth:`StateStore.mls_rows`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlcipher3 import dbapi2 as sqlcipher  # type: ignore[import-untyped, unused-ignore]

from qpq_client._errors import StateError, WrongPassphraseError
from qpq_client._rows import username_key
from qpq_client._schema import MIGRATIONS, SCHEMA_VERSION
from qpq_client._state_backup import BackupReads, BackupWrites
from qpq_client._state_base import now_ms
from qpq_client._state_groups import GroupReads, GroupWrites
from qpq_client._state_outbox import OutboxReads, OutboxWrites
from qpq_client._state_people import PeopleReads, PeopleWrites
from qpq_client._state_requests import RequestReads, RequestWrites

__all__ = ["StateStore", "Transaction"]

STATE_FILE = "state.db"
Changes = Iterable[tuple[bytes, bytes | None]]


def _sync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # no WAL: every commit is in the database file, synced when it was moved
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Transaction(GroupWrites, OutboxWrites, PeopleWrites, RequestWrites, BackupWrites):
    """The writes of one atomic step; use through :meth:`StateStore.transaction`.

    Each kind of row has its writes in its own module (groups and history,
    outbox and cursor, people, requests); this is all of them on one cursor.
    """

    def apply_changes(self, changes: Changes) -> None:
        """Write a qpq-core change set (value ``None`` deletes the key)."""
        for key, value in changes:
            if value is None:
                self._cursor.execute("DELETE FROM mls_kv WHERE key = ?", (key,))
            else:
                self._cursor.execute(
                    "INSERT OR REPLACE INTO mls_kv (key, value) VALUES (?, ?)", (key, value)
                )

    def set_identity(self, seed: bytes, username: str) -> None:
        self._cursor.execute(
            "INSERT INTO identity (id, seed, username, created_at) VALUES (1, ?, ?, ?)",
            (seed, username, now_ms()),
        )

    def set_device(self, certificate: bytes, account_seed: bytes) -> None:
        """This profile is a linked device: its certificate and its account's seed."""
        self._cursor.execute(
            "UPDATE identity SET certificate = ?, account_seed = ? WHERE id = 1",
            (certificate, account_seed),
        )

    def set_username(self, username: str) -> None:
        """Our own account was renamed on the server."""
        self._cursor.execute("UPDATE identity SET username = ? WHERE id = 1", (username,))

    def set_setting(self, name: str, value: str) -> None:
        self._cursor.execute(
            "INSERT OR REPLACE INTO settings (name, value) VALUES (?, ?)", (name, value)
        )

    def forget_group(self, group_id: bytes) -> None:
        """Drop a group we never accepted: its row, history, request and held messages."""
        self.delete_request(group_id)
        self.delete_held(group_id)
        self.clear_history(group_id)
        self._cursor.execute("DELETE FROM groups WHERE group_id = ?", (group_id,))


class StateStore(GroupReads, OutboxReads, PeopleReads, RequestReads, BackupReads):
    """An open, unlocked profile database. Build with :meth:`open`.

    Its reads of each kind of row are in their own modules (groups and
    history, outbox and cursor, people, requests); the writes are
    :class:`Transaction`'s.
    """

    def __init__(self, home: Path, connection: Any) -> None:
        self.home = home
        self._db = connection
        self._data_version = self._read_data_version()
        #: Inside :meth:`batch`: each transaction is a savepoint of the batch's one.
        self._batching = False
        #: The task whose batch is open: only its writes join it.
        self._batch_owner: asyncio.Task[Any] | None = None
        #: Commits made without waiting for the disk, and how many of them a
        #: finished sync of the WAL covers (:meth:`sync_to_disk`).
        self._unsynced_commits = 0
        self._synced_commits = 0
        self._syncing: asyncio.Future[None] | None = None

    @classmethod
    def exists(cls, home: Path) -> bool:
        """Whether ``home`` holds a state database."""
        return (home / STATE_FILE).is_file()

    @classmethod
    def open(cls, home: Path, passphrase: str, *, create: bool = False) -> StateStore:
        """Open (or with ``create``, create) the profile database in ``home``.

        Raises:
            WrongPassphraseError: the passphrase does not decrypt the file.
            StateError: the directory or file cannot be used.
        """
        if not passphrase or "\x00" in passphrase:
            raise StateError("the state passphrase must be non-empty text")
        path = home / STATE_FILE
        try:
            if create:
                home.mkdir(mode=0o700, parents=True, exist_ok=True)
                home.chmod(0o700)
                # Create the file 0600 before SQLCipher does; its WAL and SHM
                # files inherit that mode.
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            elif not path.is_file():
                raise StateError(f"no state database in {home}")
            connection = sqlcipher.connect(str(path), isolation_level=None, timeout=10.0)
        except OSError as error:
            raise StateError(f"cannot use the state directory {home}: {error.strerror}") from error
        except sqlcipher.Error as error:
            raise StateError(f"cannot open {path}: {error}") from error
        try:
            # SQLCipher would log a wrong key to stderr; the error we raise says it once.
            connection.execute("PRAGMA cipher_log_level = NONE")
            escaped = passphrase.replace("'", "''")
            try:
                connection.execute(f"PRAGMA key = '{escaped}'")
            except sqlcipher.Error:
                # SQLite may quote the statement, i.e. the passphrase, in its message.
                raise StateError(f"cannot use the passphrase for {path}") from None
            try:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlcipher.DatabaseError as error:
                raise WrongPassphraseError(f"wrong passphrase for the state in {home}") from error
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA secure_delete = ON")
            connection.execute("PRAGMA foreign_keys = ON")
            # Schema 3 pins the names already known, compared as usernames are.
            connection.create_function("qpq_username_key", 1, username_key, deterministic=True)
            store = cls(home, connection)
            store._migrate()
        except BaseException:
            connection.close()
            raise
        return store

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StateError(f"state schema {version} is newer than this client understands")
        for target, script in MIGRATIONS:
            if target <= version:
                continue
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for statement in script.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {target}")
                self._db.execute("COMMIT")
            except sqlcipher.Error as error:
                self._rollback()
                raise StateError(f"cannot upgrade the state schema to {target}: {error}") from error

    def close(self) -> None:
        """Truncate the WAL (so deleted secrets leave the disk) and close."""
        with contextlib.suppress(sqlcipher.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Transaction]:
        """One atomic write: everything in the block commits, or nothing.

        Inside :meth:`batch`, the block is a savepoint: undone alone if it
        fails, kept only if the batch commits. ``durable=False`` commits
        without waiting for the disk, as :meth:`batch` does.

        Raises:
            StateError: the database refused the write; nothing was kept. Or
                another task's batch is open: each operation is its own
                transaction, so writes of concurrent callers go through the
                client's lock (``Client``), never into another's batch.
        """
        if self._batching:
            if _current_task() is not self._batch_owner:
                # One connection holds one transaction: joined, this write
                # would commit or roll back with another operation's batch.
                raise StateError(
                    "another operation of this client is writing; run this one after it"
                    " (through the client's lock)"
                )
            scope = self._atomic("SAVEPOINT write", "RELEASE write", self._rollback_savepoint)
        else:
            scope = self._atomic("BEGIN IMMEDIATE", "COMMIT", self._rollback)
            if not durable:
                scope = self._chained(self._synchronous(durable=False), scope)
        with scope:
            cursor = self._db.cursor()
            try:
                yield Transaction(cursor)
            finally:
                cursor.close()
        if not self._batching:
            self._data_version = self._read_data_version()

    @contextlib.contextmanager
    def batch(self, *, durable: bool = True) -> Iterator[None]:
        """Make the transactions in the block one: committed together at its end, or none.

        For a batch of received messages: one commit (one sync to disk)
        instead of one per message. Reads in the block see its writes.

        ``durable=False`` commits without waiting for the disk: what it
        wrote survives the process ending at once (SQLite's WAL), not the
        machine; :meth:`sync_to_disk` makes it durable later. A follower
        shows a batch first and syncs before it acknowledges it.

        Raises:
            StateError: the database refused the batch; nothing of it was kept.
        """
        if self._batching:
            raise StateError("batches do not nest")
        with self._synchronous(durable), self._atomic("BEGIN IMMEDIATE", "COMMIT", self._rollback):
            self._batching = True
            self._batch_owner = _current_task()
            try:
                yield
            finally:
                self._batching = False
                self._batch_owner = None
        self._data_version = self._read_data_version()

    @staticmethod
    @contextlib.contextmanager
    def _chained(
        outer: contextlib.AbstractContextManager[None],
        inner: contextlib.AbstractContextManager[None],
    ) -> Iterator[None]:
        with outer, inner:
            yield

    @contextlib.contextmanager
    def _synchronous(self, durable: bool) -> Iterator[None]:
        """With ``durable=False``, COMMITs in the block do not wait for the disk."""
        if durable:
            yield
            return
        self._db.execute("PRAGMA synchronous = NORMAL")
        try:
            yield
            self._unsynced_commits += 1
        finally:
            self._db.execute("PRAGMA synchronous = FULL")

    async def sync_to_disk(self, *, others: bool = False) -> None:
        """Make every commit so far durable, without holding the event loop.

        In WAL mode a commit is a write to the ``-wal`` file; with
        ``synchronous = NORMAL`` it is synced only at the next checkpoint
        (which syncs the WAL first) or the next ``FULL`` commit. Syncing the
        WAL file, from a worker thread, covers every commit written to it
        before the sync began (fsync is per file, whichever descriptor
        wrote). Callers share syncs: one that began after this caller's
        commits covers them, so concurrent senders pay one fsync together.
        ``others``: also what other processes of the profile committed
        (this process does not count those): a sync begun now.

        Raises:
            StateError: the file could not be synced.
        """
        if others:
            self._unsynced_commits += 1  # as if this caller had just committed
        target = self._unsynced_commits
        while self._synced_commits < target:
            syncing = self._syncing
            if syncing is None or syncing.get_loop() is not asyncio.get_running_loop():
                syncing = asyncio.ensure_future(self._sync(self._unsynced_commits))
                self._syncing = syncing
            try:
                # Shielded: a caller cancelled must not cancel the others' sync.
                await asyncio.shield(syncing)
            except OSError as error:
                raise StateError(f"cannot sync the state to disk: {error.strerror}") from error

    async def _sync(self, covered: int) -> None:
        """Sync the WAL file; then the first ``covered`` commits are durable.

        The count and :attr:`_syncing` change in the same step that ends
        the sync, so a caller that finds a sync finished never waits on it
        again (it would not yield to the event loop, and would spin).
        """
        try:
            await asyncio.to_thread(_sync_file, self.home / f"{STATE_FILE}-wal")
            self._synced_commits = max(self._synced_commits, covered)
        finally:
            if self._syncing is asyncio.current_task():
                self._syncing = None

    @contextlib.contextmanager
    def _atomic(self, begin: str, end: str, undo: Callable[[], None]) -> Iterator[None]:
        """``begin``, the block, then ``end``; ``undo`` if either fails."""
        try:
            self._db.execute(begin)
        except sqlcipher.Error as error:
            raise StateError(f"cannot write the state: {error}") from error
        try:
            yield
            self._db.execute(end)
        except sqlcipher.Error as error:
            undo()
            raise StateError(f"cannot write the state: {error}") from error
        except BaseException:
            undo()
            raise

    def _rollback_savepoint(self) -> None:
        with contextlib.suppress(sqlcipher.Error):
            self._db.execute("ROLLBACK TO write")
            self._db.execute("RELEASE write")

    def _rollback(self) -> None:
        with contextlib.suppress(sqlcipher.Error):
            self._db.execute("ROLLBACK")

    def _read_data_version(self) -> int:
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        return int(version)

    def changed_elsewhere(self) -> bool:
        """True (once) if another process committed since we last looked."""
        version = self._read_data_version()
        changed = version != self._data_version
        self._data_version = version
        return changed

    def identity(self) -> tuple[bytes, str] | None:
        row = self._db.execute("SELECT seed, username FROM identity WHERE id = 1").fetchone()
        return None if row is None else (bytes(row[0]), str(row[1]))

    def device(self) -> tuple[bytes, bytes] | None:
        """A linked device's certificate and account seed (None: the profile's key is
        its account's)."""
        row = self._db.execute(
            "SELECT certificate, account_seed FROM identity WHERE id = 1"
        ).fetchone()
        if row is None or row[0] is None or row[1] is None:
            return None
        return bytes(row[0]), bytes(row[1])

    def setting(self, name: str) -> str | None:
        value = self._one("SELECT value FROM settings WHERE name = ?", (name,))
        return None if value is None else str(value)

    def mls_rows(self) -> list[tuple[bytes, bytes]]:
        return [(bytes(k), bytes(v)) for k, v in self._db.execute("SELECT key, value FROM mls_kv")]


def _current_task() -> asyncio.Task[Any] | None:
    """The running task, or None outside an event loop (set-up, tests)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
