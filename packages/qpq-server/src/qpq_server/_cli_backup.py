"""``qpq-server backup``, ``restore`` and ``rekey``: the store's operator commands.

They take the settings ``run`` takes (``--config``, ``--data-dir``, the
``QPQ_*`` environment) and work on the SQLCipher file in ``data_dir``;
with ``database_url`` set (PostgreSQL) they refuse and name the tool to
use instead (``pg_dump``, ``pg_restore``; see docs/deployment.md).

- ``backup DEST`` runs beside a running server (an online copy).
- ``restore SRC`` fills an empty data directory; start the server after.
- ``rekey`` needs the server stopped (it takes the data directory lock);
  the new key comes from ``--new-key-file`` or ``QPQ_NEW_DB_KEY`` /
  ``QPQ_NEW_DB_KEY_FILE``, never from the command line, where other users
  of the host could read it in the process list.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qpq_server._backup import backup_store, rekey_store, restore_store
from qpq_server._checks import db_key_weakness
from qpq_server._config import ENV_PREFIX, ServerConfig
from qpq_server._data_dir_lock import DataDirLock
from qpq_server._errors import StartupError, StorageError

__all__ = ["NEW_KEY_ENV", "add_backup_commands", "run_backup", "run_rekey", "run_restore"]

#: Where ``rekey`` reads the new key when ``--new-key-file`` is not given.
NEW_KEY_ENV = f"{ENV_PREFIX}NEW_DB_KEY"
EXIT_OK = 0
EXIT_FAILURE = 1


def add_backup_commands(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``backup``, ``restore`` and ``rekey`` to ``commands``."""
    backup = commands.add_parser(
        "backup", help="copy the SQLCipher database to DEST while the server runs (encrypted)"
    )
    common(backup)
    backup.add_argument("dest", metavar="DEST", type=Path, help="a new file to write")
    restore = commands.add_parser(
        "restore", help="put a backup in place in an empty data directory"
    )
    common(restore)
    restore.add_argument("source", metavar="SRC", type=Path, help="a file `backup` wrote")
    rekey = commands.add_parser(
        "rekey",
        help=f"change the database key (server stopped); new key from --new-key-file or "
        f"{NEW_KEY_ENV}",
    )
    common(rekey)
    rekey.add_argument(
        "--new-key-file", type=Path, help=f"file holding the new key (else {NEW_KEY_ENV}[_FILE])"
    )


def _fail(message: str) -> int:
    print(f"qpq-server: error: {message}", file=sys.stderr)
    return EXIT_FAILURE


def _sqlcipher_only(config: ServerConfig, command: str) -> str | None:
    if config.database_url:
        return (
            f"{command} works on the SQLCipher store; this server uses PostgreSQL "
            "(database_url): use pg_dump / pg_restore (docs/deployment.md)"
        )
    return None


def run_backup(args: argparse.Namespace, config: ServerConfig) -> int:
    """``qpq-server backup DEST``."""
    refused = _sqlcipher_only(config, "backup")
    if refused is not None:
        return _fail(refused)
    try:
        info = backup_store(config.database_path, config.db_key, args.dest)
    except StorageError as error:
        return _fail(str(error))
    print(
        f"backed up {config.database_path} to {info.path} ({info.size_bytes} bytes, schema "
        f"version {info.schema_version}); it opens with the same db_key"
    )
    return EXIT_OK


def run_restore(args: argparse.Namespace, config: ServerConfig) -> int:
    """``qpq-server restore SRC``."""
    refused = _sqlcipher_only(config, "restore")
    if refused is not None:
        return _fail(refused)
    try:
        info = restore_store(args.source, config.db_key, config.database_path)
    except StorageError as error:
        return _fail(str(error))
    print(
        f"restored {args.source} to {info.path} (schema version {info.schema_version}); "
        "start the server with the same db_key"
    )
    return EXIT_OK


def _read_key_file(path: Path, setting: str) -> str:
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{setting}: cannot read {path}: {error.__class__.__name__}") from None
    # Trailing newlines from `echo key > file` are not part of the key.
    return text.rstrip("\r\n")


def new_key(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """The new key: ``--new-key-file``, else ``QPQ_NEW_DB_KEY`` or its ``_FILE``.

    Raises:
        ValueError: none given, or several, or one that cannot be read.
    """
    given = [
        name
        for name, present in (
            ("--new-key-file", args.new_key_file is not None),
            (NEW_KEY_ENV, NEW_KEY_ENV in env),
            (f"{NEW_KEY_ENV}_FILE", f"{NEW_KEY_ENV}_FILE" in env),
        )
        if present
    ]
    if not given:
        raise ValueError(f"give the new key in a file (--new-key-file) or in {NEW_KEY_ENV}")
    if len(given) > 1:
        raise ValueError(f"give the new key once: {' and '.join(given)} are both set")
    if args.new_key_file is not None:
        return _read_key_file(args.new_key_file, "--new-key-file")
    if NEW_KEY_ENV in env:
        return env[NEW_KEY_ENV]
    return _read_key_file(Path(env[f"{NEW_KEY_ENV}_FILE"]), f"{NEW_KEY_ENV}_FILE")


def run_rekey(args: argparse.Namespace, config: ServerConfig, env: Mapping[str, str]) -> int:
    """``qpq-server rekey``: re-encrypt the stopped server's database under a new key."""
    refused = _sqlcipher_only(config, "rekey")
    if refused is not None:
        return _fail(refused)
    if not config.db_key:
        return _fail(
            "db_key is empty: rekey changes the key of an encrypted database (set QPQ_DB_KEY "
            "or QPQ_DB_KEY_FILE to the current key)"
        )
    try:
        key = new_key(args, env)
    except ValueError as error:
        return _fail(str(error))
    if not key or "\x00" in key:
        return _fail("the new key must be non-empty and hold no NUL characters")
    if key == config.db_key:
        return _fail("the new key is the current db_key")
    weakness = db_key_weakness(key)
    if config.production and weakness is not None:
        return _fail(f"the new key {weakness}")
    try:
        lock = DataDirLock.acquire(config.data_dir, purpose="rekey")
    except StartupError as error:
        return _fail(str(error))
    try:
        rekey_store(config.database_path, config.db_key, key)
    except StorageError as error:
        return _fail(str(error))
    finally:
        lock.release()
    print(
        f"rekeyed {config.database_path}: set db_key to the new key before starting the "
        "server (the old key no longer opens it)"
    )
    return EXIT_OK
