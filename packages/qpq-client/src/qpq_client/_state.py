"""The encrypted local state: one SQLCipher database per profile.

Everything a client knows lives here: its identity seed, its settings
(server, trust, token, invite policy), the MLS key-value rows qpq-core hands
out as change sets, groups, history, the outbox of messages not yet accepted
by the server, the last processed and acknowledged server seq, the people
it knows (pinned keys, contacts, blocks), and invitations held as requests
with their groups' messages. The schema and its migrations are in
:mod:`qpq_client._schema`, the rows it hands out in :mod:`qpq_client._rows`.
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

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlcipher3 import dbapi2 as sqlcipher  # type: ignore[import-untyped, unused-ignore]

from qpq_client._errors import (
    ProfileBusyError,
    StateError,
    WrongPassphraseError,
)
from qpq_client._rows import (
    GroupRow,
    GroupState,
    HeldRow,
    HistoryRow,
    OutboxKind,
    OutboxRow,
    OutboxState,
    PersonRow,
    PinRow,
    RequestRow,
    username_key,
)
from qpq_client._schema import MIGRATIONS, SCHEMA_VERSION
from qpq_proto import Envelope

__all__ = ["ProfileLock", "StateStore", "Transaction"]

STATE_FILE = "state.db"
LOCK_FILE = "lock"
Changes = Iterable[tuple[bytes, bytes | None]]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Transaction:
    """The writes of one atomic step; use through :meth:`StateStore.transaction`."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

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
            (seed, username, _now_ms()),
        )

    def set_setting(self, name: str, value: str) -> None:
        self._cursor.execute(
            "INSERT OR REPLACE INTO settings (name, value) VALUES (?, ?)", (name, value)
        )

    def add_group(self, group_id: bytes, name: str, *, named: bool) -> None:
        self._cursor.execute(
            "INSERT INTO groups (group_id, name, state, named, created_at) VALUES (?, ?, ?, ?, ?)",
            (group_id, name, GroupState.ACTIVE.value, int(named), _now_ms()),
        )

    def rename_group(self, group_id: bytes, name: str) -> None:
        self._cursor.execute(
            "UPDATE groups SET name = ?, named = 1 WHERE group_id = ?", (name, group_id)
        )

    def set_needs_rejoin(self, group_id: bytes, needs_rejoin: bool) -> None:
        self._cursor.execute(
            "UPDATE groups SET needs_rejoin = ? WHERE group_id = ?", (int(needs_rejoin), group_id)
        )

    def set_group_state(self, group_id: bytes, state: GroupState) -> None:
        self._cursor.execute(
            "UPDATE groups SET state = ? WHERE group_id = ?", (state.value, group_id)
        )

    def add_history(
        self,
        group_id: bytes,
        kind: str,
        body: str,
        *,
        sender: bytes | None,
        sent_at: int | None = None,
        seq: int | None = None,
        shown: bool = False,
        message_id: str | None = None,
    ) -> int | None:
        """Add a line; None when its sender's ``message_id`` is in the group's history already."""
        now = _now_ms()
        self._cursor.execute(
            "INSERT INTO history (group_id, kind, sender, body, sent_at, received_at, seq, shown,"
            " message_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (group_id, sender, message_id) DO NOTHING",
            (group_id, kind, sender, body, sent_at or now, now, seq, int(shown), message_id),
        )
        if not self._cursor.rowcount:
            return None
        row_id: int = self._cursor.lastrowid
        return row_id

    def delete_history_row(self, row_id: int) -> None:
        self._cursor.execute("DELETE FROM history WHERE id = ?", (row_id,))

    def add_seen(self, digest: bytes) -> None:
        """Remember a processed application message's digest (direct and server copies)."""
        self._cursor.execute(
            "INSERT OR IGNORE INTO seen (digest, received_at) VALUES (?, ?)", (digest, _now_ms())
        )

    def forget_seen_before(self, before_ms: int) -> None:
        self._cursor.execute("DELETE FROM seen WHERE received_at < ?", (before_ms,))

    def mark_shown(self, ids: Iterable[int]) -> None:
        self._cursor.executemany("UPDATE history SET shown = 1 WHERE id = ?", [(i,) for i in ids])

    def set_processed_seq(self, seq: int) -> None:
        self._cursor.execute(
            "UPDATE cursor SET processed_seq = max(processed_seq, ?) WHERE id = 1", (seq,)
        )

    def set_acked_seq(self, seq: int) -> None:
        self._cursor.execute("UPDATE cursor SET acked_seq = max(acked_seq, ?) WHERE id = 1", (seq,))

    def reset_cursor(self) -> None:
        """Forget the server's numbering: its queue for us started again."""
        self._cursor.execute("UPDATE cursor SET processed_seq = 0, acked_seq = 0 WHERE id = 1")

    def add_outbox(
        self,
        kind: OutboxKind,
        group_id: bytes,
        epoch: int,
        payload: bytes,
        *,
        welcome: bytes | None = None,
        group_info: bytes | None = None,
        state: OutboxState = OutboxState.PENDING,
    ) -> int:
        self._cursor.execute(
            "INSERT INTO outbox (kind, group_id, epoch, payload, welcome, group_info,"
            " state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kind.value,
                group_id,
                epoch,
                payload,
                welcome,
                group_info,
                state.value,
                _now_ms(),
            ),
        )
        row_id: int = self._cursor.lastrowid
        return row_id

    def set_outbox_state(self, outbox_id: int, state: OutboxState) -> None:
        self._cursor.execute("UPDATE outbox SET state = ? WHERE id = ?", (state.value, outbox_id))

    def delete_outbox(self, outbox_id: int) -> None:
        self._cursor.execute("DELETE FROM outbox WHERE id = ?", (outbox_id,))

    def put_contact(self, identity_key: bytes, username: str, *, contact: bool = False) -> None:
        """Remember the username the server gave for a key; ``contact`` makes it a contact."""
        self._cursor.execute(
            "INSERT INTO contacts (identity_key, username, contact, blocked) VALUES (?, ?, ?, 0)"
            " ON CONFLICT (identity_key) DO UPDATE SET username = excluded.username,"
            " contact = max(contact, excluded.contact)",
            (identity_key, username, int(contact)),
        )

    def mark_contacts(self, identity_keys: Iterable[bytes]) -> None:
        """Make known identities contacts (we share a group with them)."""
        self._cursor.executemany(
            "UPDATE contacts SET contact = 1 WHERE identity_key = ?", [(k,) for k in identity_keys]
        )

    def set_blocked(self, identity_key: bytes, username: str, blocked: bool) -> None:
        self._cursor.execute(
            "INSERT INTO contacts (identity_key, username, contact, blocked) VALUES (?, ?, 0, ?)"
            " ON CONFLICT (identity_key) DO UPDATE SET blocked = excluded.blocked",
            (identity_key, username, int(blocked)),
        )

    def pin(self, username: str, identity_key: bytes) -> None:
        """Pin ``identity_key`` for ``username`` (first use, or a change the user accepted)."""
        self._cursor.execute(
            "INSERT OR REPLACE INTO pins (name_key, username, identity_key, verified, changed_key)"
            " VALUES (?, ?, ?, 0, NULL)",
            (username_key(username), username, identity_key),
        )

    def set_changed_key(self, username: str, changed_key: bytes) -> None:
        self._cursor.execute(
            "UPDATE pins SET changed_key = ? WHERE name_key = ?",
            (changed_key, username_key(username)),
        )

    def set_verified(self, username: str, verified: bool) -> None:
        self._cursor.execute(
            "UPDATE pins SET verified = ? WHERE name_key = ?",
            (int(verified), username_key(username)),
        )

    def add_request(self, group_id: bytes, inviter: bytes, welcome: bytes) -> None:
        self._cursor.execute(
            "INSERT OR REPLACE INTO requests (group_id, inviter, welcome, received_at)"
            " VALUES (?, ?, ?, ?)",
            (group_id, inviter, welcome, _now_ms()),
        )
        self.delete_held(group_id)  # a newer Welcome: what was held is from before it

    def hold(self, group_id: bytes, envelope: Envelope) -> None:
        self._cursor.execute(
            "INSERT INTO held (group_id, seq, sender, payload, enqueued_at_ms, gap_group_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                group_id,
                envelope.seq,
                envelope.sender,
                envelope.payload,
                envelope.enqueued_at_ms,
                envelope.gap_group_id,
            ),
        )

    def delete_held_row(self, held_id: int) -> None:
        self._cursor.execute("DELETE FROM held WHERE id = ?", (held_id,))

    def delete_held(self, group_id: bytes) -> None:
        self._cursor.execute("DELETE FROM held WHERE group_id = ?", (group_id,))

    def delete_request(self, group_id: bytes) -> None:
        self._cursor.execute("DELETE FROM requests WHERE group_id = ?", (group_id,))

    def clear_history(self, group_id: bytes) -> None:
        self._cursor.execute("DELETE FROM history WHERE group_id = ?", (group_id,))

    def forget_group(self, group_id: bytes) -> None:
        """Drop a group we never accepted: its row, history, request and held messages."""
        self.delete_request(group_id)
        self.delete_held(group_id)
        self.clear_history(group_id)
        self._cursor.execute("DELETE FROM groups WHERE group_id = ?", (group_id,))


class StateStore:
    """An open, unlocked profile database. Build with :meth:`open`."""

    def __init__(self, home: Path, connection: Any) -> None:
        self.home = home
        self._db = connection
        self._data_version = self._read_data_version()
        #: Inside :meth:`batch`: each transaction is a savepoint of the batch's one.
        self._batching = False

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
                raise WrongPassphraseError(
                    f"wrong passphrase for the state in {home} (check $QPQ_STATE_KEY)"
                ) from error
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

    # ---- transactions --------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One atomic write: everything in the block commits, or nothing.

        Inside :meth:`batch`, the block is a savepoint: undone alone if it
        fails, kept only if the batch commits.

        Raises:
            StateError: the database refused the write; nothing was kept.
        """
        if self._batching:
            scope = self._atomic("SAVEPOINT write", "RELEASE write", self._rollback_savepoint)
        else:
            scope = self._atomic("BEGIN IMMEDIATE", "COMMIT", self._rollback)
        with scope:
            cursor = self._db.cursor()
            try:
                yield Transaction(cursor)
            finally:
                cursor.close()
        if not self._batching:
            self._data_version = self._read_data_version()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Make the transactions in the block one: committed together at its end, or none.

        For a batch of received messages: one commit (one sync to disk)
        instead of one per message. Reads in the block see its writes.

        Raises:
            StateError: the database refused the batch; nothing of it was kept.
        """
        if self._batching:
            raise StateError("batches do not nest")
        with self._atomic("BEGIN IMMEDIATE", "COMMIT", self._rollback):
            self._batching = True
            try:
                yield
            finally:
                self._batching = False
        self._data_version = self._read_data_version()

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

    # ---- reads ---------------------------------------------------------

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        row = self._db.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def identity(self) -> tuple[bytes, str] | None:
        row = self._db.execute("SELECT seed, username FROM identity WHERE id = 1").fetchone()
        return None if row is None else (bytes(row[0]), str(row[1]))

    def setting(self, name: str) -> str | None:
        value = self._one("SELECT value FROM settings WHERE name = ?", (name,))
        return None if value is None else str(value)

    def mls_rows(self) -> list[tuple[bytes, bytes]]:
        return [(bytes(k), bytes(v)) for k, v in self._db.execute("SELECT key, value FROM mls_kv")]

    def processed_seq(self) -> int:
        return int(self._one("SELECT processed_seq FROM cursor WHERE id = 1"))

    def acked_seq(self) -> int:
        return int(self._one("SELECT acked_seq FROM cursor WHERE id = 1"))

    def groups(self) -> list[GroupRow]:
        return [
            GroupRow(bytes(g), n, GroupState(s), bool(named), bool(rejoin))
            for g, n, s, named, rejoin in self._db.execute(
                "SELECT group_id, name, state, named, needs_rejoin FROM groups ORDER BY name"
            )
        ]

    def group_by_name(self, name: str) -> GroupRow | None:
        return next((g for g in self.groups() if g.name == name), None)

    def group_by_id(self, group_id: bytes) -> GroupRow | None:
        return next((g for g in self.groups() if g.group_id == group_id), None)

    def seen(self, digest: bytes) -> bool:
        """Whether an application message with this digest was processed already."""
        return self._one("SELECT 1 FROM seen WHERE digest = ?", (digest,)) is not None

    def history(self, group_id: bytes | None = None, *, unshown: bool = False) -> list[HistoryRow]:
        sql = (
            "SELECT id, group_id, kind, sender, body, sent_at, received_at, seq FROM history"
            " WHERE (? IS NULL OR group_id = ?) AND (? = 0 OR shown = 0) ORDER BY id"
        )
        return [
            HistoryRow(i, bytes(g), k, None if s is None else bytes(s), b, t, r, q)
            for i, g, k, s, b, t, r, q in self._db.execute(sql, (group_id, group_id, int(unshown)))
        ]

    def outbox(self) -> list[OutboxRow]:
        return [
            OutboxRow(
                i,
                OutboxKind(k),
                bytes(g),
                e,
                bytes(p),
                None if w is None else bytes(w),
                None if gi is None else bytes(gi),
                OutboxState(s),
            )
            for i, k, g, e, p, w, gi, s in self._db.execute(
                "SELECT id, kind, group_id, epoch, payload, welcome, group_info,"
                " state FROM outbox ORDER BY id"
            )
        ]

    def contact(self, identity_key: bytes) -> str | None:
        value = self._one("SELECT username FROM contacts WHERE identity_key = ?", (identity_key,))
        return None if value is None else str(value)

    def person(self, identity_key: bytes) -> PersonRow | None:
        row = self._db.execute(
            "SELECT username, contact, blocked FROM contacts WHERE identity_key = ?",
            (identity_key,),
        ).fetchone()
        return None if row is None else PersonRow(identity_key, row[0], bool(row[1]), bool(row[2]))

    def people_named(self, username: str) -> list[PersonRow]:
        """Every identity the server ever gave ``username`` for (compared as usernames are)."""
        key = username_key(username)
        return [
            PersonRow(bytes(k), u, bool(c), bool(b))
            for k, u, c, b in self._db.execute(
                "SELECT identity_key, username, contact, blocked FROM contacts"
            )
            if username_key(u) == key
        ]

    def pin(self, username: str) -> PinRow | None:
        key = username_key(username)
        return next((p for p in self.pins() if username_key(p.username) == key), None)

    def pins(self) -> list[PinRow]:
        return [
            PinRow(u, bytes(k), bool(v), None if c is None else bytes(c))
            for u, k, v, c in self._db.execute(
                "SELECT username, identity_key, verified, changed_key FROM pins ORDER BY name_key"
            )
        ]

    def request(self, group_id: bytes) -> RequestRow | None:
        row = self._db.execute(
            "SELECT inviter, welcome FROM requests WHERE group_id = ?", (group_id,)
        ).fetchone()
        return None if row is None else RequestRow(group_id, bytes(row[0]), bytes(row[1]))

    def requests(self) -> list[RequestRow]:
        return [
            RequestRow(bytes(g), bytes(i), bytes(w))
            for g, i, w in self._db.execute("SELECT group_id, inviter, welcome FROM requests")
        ]

    def held(self, group_id: bytes) -> list[HeldRow]:
        return [
            HeldRow(i, Envelope(q, bytes(s), bytes(p), t, gap_group_id=bytes(gap)))
            for i, q, s, p, t, gap in self._db.execute(
                "SELECT id, seq, sender, payload, enqueued_at_ms, gap_group_id FROM held"
                " WHERE group_id = ? ORDER BY id",
                (group_id,),
            )
        ]


class ProfileLock:
    """An advisory lock on the profile, held while one process changes it."""

    def __init__(self, home: Path) -> None:
        self._path = home / LOCK_FILE
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def busy_error(self) -> ProfileBusyError:
        return ProfileBusyError(f"another qpq process is using {self._path.parent}")
