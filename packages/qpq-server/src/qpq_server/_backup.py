"""Online backup, restore and rekey of the SQLCipher store.

The library side of ``qpq-server backup``, ``restore`` and ``rekey``
(:mod:`._cli_backup` is the shell). All three work on the database file
through their own ``sqlcipher3`` connection, never through a running
server:

- **backup** uses SQLite's online backup API (``sqlite3_backup_*``, as
  ``Connection.backup``) in one step: it copies every page under one read
  transaction of the source, so the copy is the database as of one commit,
  the WAL's committed frames included, while the server goes on writing
  (WAL readers do not block writers). SQLCipher decrypts each page from the
  source and encrypts it for the destination, which is keyed with the same
  key: the copy stays encrypted and opens with the same ``db_key``.
- **restore** copies a backup the same way into the data directory, after
  checking that the key opens it and that its schema version is one this
  server knows.
- **rekey** is ``PRAGMA rekey``: SQLCipher re-encrypts every page in one
  write transaction, so a crash leaves the database under the old key or
  the new one, never a mix. The caller holds the data directory lock
  (:mod:`._data_dir_lock`): no server may use the old key meanwhile.

Every file is written under a temporary name (mode 0600) and renamed into
place once complete and checked, so a failure leaves no half-written
database under the final name.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import sqlcipher3

from qpq_server._errors import StorageError
from qpq_server._migrations import MIGRATIONS

__all__ = ["BackupInfo", "backup_store", "rekey_store", "restore_store", "schema_version"]

_BUSY_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """What a backup or restore wrote.

    Attributes:
        path: the file written.
        schema_version: the schema version of the copied database.
        size_bytes: the file's size.
    """

    path: Path
    schema_version: int
    size_bytes: int


def _quote(key: str) -> str:
    # PRAGMA takes no bound parameters: quote as an SQL string literal.
    return "'" + key.replace("'", "''") + "'"


def _open(path: Path, key: str, *, what: str) -> sqlcipher3.Connection:
    """A connection to ``path`` unlocked by ``key``; StorageError naming ``what`` otherwise."""
    try:
        conn = sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False)
    except sqlcipher3.Error as error:
        raise StorageError(f"cannot open {path}: {error}") from None
    try:
        # SQLCipher would log a wrong key on stderr; the error raised says it once.
        conn.execute("PRAGMA cipher_log_level = NONE")
        if key:
            conn.execute(f"PRAGMA key = {_quote(key)}")
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlcipher3.DatabaseError:
        conn.close()
        raise StorageError(f"cannot unlock {path}: {what} is wrong") from None
    return conn


def schema_version(conn: sqlcipher3.Connection, path: Path) -> int:
    """The schema version a qpq-server database holds.

    Raises:
        StorageError: it is no qpq-server database, or newer than this server.
    """
    try:
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    except sqlcipher3.Error:
        raise StorageError(f"{path} is not a qpq-server database (no schema version)") from None
    version = int(row[0])
    latest = MIGRATIONS[-1][0]
    if version == 0:
        raise StorageError(f"{path} is not a qpq-server database (no schema version)")
    if version > latest:
        raise StorageError(
            f"{path} has schema version {version}, newer than this server knows ({latest}); "
            "restore it with a server at least as new as the one that wrote it"
        )
    return version


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_partial(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


def _copy(source: Path, key: str, dest: Path, *, what: str) -> BackupInfo:
    """Copy the database at ``source`` to a new file ``dest`` keyed with ``key``."""
    if not source.is_file():
        raise StorageError(f"no database at {source}")
    if dest.exists():
        raise StorageError(f"{dest} exists; give a path that does not exist yet")
    if not dest.parent.is_dir():
        raise StorageError(f"{dest.parent} is not a directory")
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    _remove_partial(partial)
    src = _open(source, key, what=what)
    try:
        version = schema_version(src, source)
        try:
            # Created private before SQLite opens it: its journal files take its mode.
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            out = _open(partial, key, what=what)
        except OSError as error:
            raise StorageError(f"cannot write {partial}: {error.strerror or error}") from None
        try:
            # pages=-1: one step, one read transaction of the source (one snapshot).
            src.backup(out, pages=-1)
            check = out.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise StorageError(f"the copy at {partial} failed its integrity check")
            schema_version(out, partial)
        finally:
            out.close()
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, dest)
        _fsync_dir(dest.parent)
    except sqlcipher3.Error as error:
        raise StorageError(f"cannot copy {source} to {dest}: {error}") from None
    except OSError as error:
        raise StorageError(f"cannot write {dest}: {error.strerror or error}") from None
    finally:
        src.close()
        _remove_partial(partial)
    return BackupInfo(dest, version, dest.stat().st_size)


def backup_store(database: Path, key: str, dest: Path) -> BackupInfo:
    """Write a consistent copy of the live database ``database`` to ``dest``.

    The copy is encrypted with the same ``key`` (the server's ``db_key``).

    Raises:
        StorageError: the key does not open the database, ``dest`` exists, or
            the copy cannot be written (nothing is left under ``dest``).
    """
    return _copy(database, key, dest, what="db_key")


def restore_store(backup: Path, key: str, database: Path) -> BackupInfo:
    """Put the backup ``backup`` in place as ``database`` (the data directory's file).

    The data directory must be empty or missing: a restore never merges
    into, or replaces, a database a server may have written since.

    Raises:
        StorageError: the directory is not empty, ``key`` does not open the
            backup, or its schema is not one this server knows.
    """
    data_dir = database.parent
    created = not data_dir.exists()
    if not created:
        if not data_dir.is_dir():
            raise StorageError(f"{data_dir} is not a directory")
        if any(data_dir.iterdir()):
            raise StorageError(
                f"{data_dir} is not empty: restore only into an empty or new data directory"
            )
    else:
        try:
            data_dir.mkdir(mode=0o700, parents=True)
        except OSError as error:
            raise StorageError(f"cannot create {data_dir}: {error.strerror or error}") from None
    try:
        return _copy(backup, key, database, what="db_key (the key of the backup)")
    except StorageError:
        if created:
            with contextlib.suppress(OSError):
                data_dir.rmdir()  # as it was: no directory
        raise


def rekey_store(database: Path, key: str, new_key: str) -> None:
    """Re-encrypt ``database`` from ``key`` to ``new_key`` (``PRAGMA rekey``).

    The caller holds the data directory lock. After it, only ``new_key``
    opens the database.

    Raises:
        StorageError: ``key`` does not open it, or the rekey failed (the
            database then still opens with ``key``).
    """
    if not database.is_file():
        raise StorageError(f"no database at {database}")
    conn = _open(database, key, what="db_key")
    try:
        schema_version(conn, database)
        # Fold the WAL into the file first, so the rewrite starts from one place.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        conn.execute(f"PRAGMA rekey = {_quote(new_key)}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlcipher3.Error as error:
        raise StorageError(f"cannot rekey {database}: {error.__class__.__name__}") from None
    finally:
        conn.close()
    # Proof, before the operator throws the old key away.
    _open(database, new_key, what="the new key").close()
