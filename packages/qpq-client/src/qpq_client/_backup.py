"""Profile backup: export a profile to one passphrase-sealed file, import it on a fresh home.

What a backup holds and leaves out is :mod:`qpq_client._state_backup`'s
table list; the file format (scrypt, ChaCha20-Poly1305, a versioned header)
is :mod:`qpq_client._backup_file`'s; docs/backup.md describes both.

An import comes back in three steps, and writes nothing until the first
two have succeeded:

1. open the file (a wrong passphrase, a changed or truncated file: one
   line, nothing written);
2. enroll this machine with the server (:func:`enroll_device`): a new
   device key of the backed-up account, its certificate signed with the
   account key the backup holds, registered;
3. write a new profile (a new SQLCipher state under the state passphrase,
   as ``init`` makes one) with the people, groups and history, every group
   still active marked for a rejoin, then connect: the client joins each
   group by external commit from the GroupInfo the server serves (RFC 9420
   §12.4.3.2), which adds the new device's leaf beside the lost device's;
   the other members see "bob linked a new device" and talk on.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qpq_client._backup_file import DEFAULT_KDF, ScryptParams, open_sealed, seal
from qpq_client._client import Client
from qpq_client._config import ServerAddress, Trust
from qpq_client._connection import Connection
from qpq_client._errors import AlreadyInitializedError, BackupError
from qpq_client._linking import check_device_name
from qpq_client._profile import SERVER_SETTING, TOKEN_SETTING, TRUST_SETTING, open_profile
from qpq_client._rows import GroupStatus
from qpq_client._state import STATE_FILE, StateStore
from qpq_client._state_backup import BACKUP_TABLES, Rows
from qpq_core import Identity

__all__ = [
    "RESTORED_DEVICE_NAME",
    "BackupSummary",
    "RestoredProfile",
    "enroll_device",
    "export_backup",
    "import_backup",
    "read_backup",
]

#: The version of the contents (the JSON inside); the file has its own.
CONTENTS_VERSION = 1
#: Groups whose rows a backup leaves out: invitations not accepted (their
#: Welcome is for a KeyPackage whose private key stays behind) and declined ones.
_LEFT_OUT = (GroupStatus.REQUESTED.value, GroupStatus.DECLINED.value)
#: The identity columns of a backup made before devices (issue 26).
_IDENTITY_BEFORE_DEVICES = ("seed", "username", "created_at")
#: Groups an import rejoins.
_REJOINED = (GroupStatus.ACTIVE.value, GroupStatus.LEAVING.value)
#: The name a restored device gets unless one is given.
RESTORED_DEVICE_NAME = "restored"


@dataclass(frozen=True, slots=True)
class BackupSummary:
    """What a backup file holds (no secret).

    Attributes:
        username: the account's username.
        server: the server it was registered on.
        groups: local names of the groups it holds, rejoined on import.
        history_lines: lines of history across all groups.
        contacts: people it knows.
        created_at_ms: when it was exported (unix milliseconds).
    """

    username: str
    server: str
    groups: tuple[str, ...]
    history_lines: int
    contacts: int
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class RestoredProfile:
    """What an import brought back.

    Attributes:
        summary: the backup's summary.
        rejoined: groups the restored device rejoined.
        not_rejoined: groups it could not rejoin now (the next ``qpq`` command
            tries again, or the server said we are no longer in them).
        device_name: the name of the new device the profile is.
        device_key: its device key.
    """

    summary: BackupSummary
    rejoined: tuple[str, ...]
    not_rejoined: tuple[str, ...]
    device_name: str
    device_key: bytes


# ---- contents: rows <-> JSON ------------------------------------------------


def _encode_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        return base64.b64decode(value["b64"], validate=True)
    if value is None or isinstance(value, int | str):
        return value
    raise ValueError("unexpected value")


def _kept(rows: Rows) -> Rows:
    """Leave out the groups a backup does not carry, with their history."""
    columns = BACKUP_TABLES["groups"]
    state, group_id = columns.index("state"), columns.index("group_id")
    dropped = {row[group_id] for row in rows["groups"] if row[state] in _LEFT_OUT}
    history_group = BACKUP_TABLES["history"].index("group_id")
    kept = dict(rows)
    kept["groups"] = [row for row in rows["groups"] if row[group_id] not in dropped]
    kept["history"] = [row for row in rows["history"] if row[history_group] not in dropped]
    return kept


def _to_json(rows: Rows) -> bytes:
    document = {
        "contents": CONTENTS_VERSION,
        "created_at_ms": int(time.time() * 1000),
        "tables": {
            table: {
                "columns": list(BACKUP_TABLES[table]),
                "rows": [[_encode_value(value) for value in row] for row in rows[table]],
            }
            for table in BACKUP_TABLES
        },
    }
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def _from_json(data: bytes) -> tuple[Rows, int]:
    """The rows and export time of opened contents; BackupError if they are not ours."""
    try:
        document = json.loads(data.decode("utf-8"))
        if document["contents"] != CONTENTS_VERSION:
            raise BackupError(
                f"backup contents version {document['contents']}: this client reads "
                f"version {CONTENTS_VERSION}"
            )
        rows: Rows = {}
        for table, columns in BACKUP_TABLES.items():
            stored = document["tables"][table]
            if table == "identity" and tuple(stored["columns"]) == _IDENTITY_BEFORE_DEVICES:
                # Made before devices: a first device, no certificate.
                stored = {
                    "columns": list(columns),
                    "rows": [[*row, None, None] for row in stored["rows"]],
                }
            if tuple(stored["columns"]) != columns:
                raise BackupError(f"the backup's {table} are not in the form this client reads")
            rows[table] = [
                tuple(_decode_value(value) for value in row)
                for row in stored["rows"]
                if len(row) == len(columns)
            ]
            if len(rows[table]) != len(stored["rows"]):
                raise BackupError(f"the backup's {table} are not in the form this client reads")
        if len(rows["identity"]) != 1:
            raise BackupError("the backup holds no identity")
        return rows, int(document["created_at_ms"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BackupError("the backup's contents are not in the form this client reads") from None


def _summary(rows: Rows, created_at_ms: int) -> BackupSummary:
    username = str(rows["identity"][0][BACKUP_TABLES["identity"].index("username")])
    settings: dict[str, str] = dict(rows["settings"])
    columns = BACKUP_TABLES["groups"]
    return BackupSummary(
        username=username,
        server=str(settings.get(SERVER_SETTING, "")),
        groups=tuple(
            str(row[columns.index("name")])
            for row in rows["groups"]
            if row[columns.index("state")] in _REJOINED
            and row[columns.index("archived_from")] is None
        ),
        history_lines=len(rows["history"]),
        contacts=len(rows["contacts"]),
        created_at_ms=created_at_ms,
    )


# ---- files ------------------------------------------------------------------


def _write_private(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically: a 0600 temporary file, synced, renamed."""
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        # A leftover (or a link planted in a shared directory) is removed, not
        # followed: the file is always a new one, made private from the start.
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, dest)
        directory = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise BackupError(f"cannot write {dest}: {error.strerror or error}") from None


def export_backup(
    home: Path,
    state_passphrase: str,
    dest: Path,
    backup_passphrase: str,
    *,
    kdf: ScryptParams = DEFAULT_KDF,
) -> BackupSummary:
    """Write the profile in ``home`` to ``dest``, sealed under ``backup_passphrase``.

    The file replaces ``dest`` atomically (mode 0600). It holds the identity,
    username, settings (server, trust pin, token), contacts, pinned keys,
    groups with their names and history; never MLS epoch secrets.

    Raises:
        NotInitializedError: ``home`` holds no profile.
        WrongPassphraseError: ``state_passphrase`` does not open it.
        BackupError: an empty backup passphrase, or ``dest`` cannot be written.
    """
    if not backup_passphrase:
        raise BackupError("the backup passphrase must not be empty")
    store, _identity, _username = open_profile(home, state_passphrase)
    try:
        rows = _kept(store.backup_rows())
    finally:
        store.close()
    contents = _to_json(rows)
    _write_private(dest, seal(contents, backup_passphrase, kdf))
    return _summary(rows, int(time.time() * 1000))


def read_backup(source: Path, backup_passphrase: str) -> tuple[Rows, BackupSummary]:
    """Open a backup file: its rows and summary. Writes nothing.

    Raises:
        BackupError: unreadable, not a backup, a wrong passphrase, or a
            changed or truncated file.
    """
    try:
        data = source.read_bytes()
    except OSError as error:
        raise BackupError(f"cannot read {source}: {error.strerror or error}") from None
    rows, created_at_ms = _from_json(open_sealed(data, backup_passphrase))
    return rows, _summary(rows, created_at_ms)


async def enroll_device(
    rows: Rows,
    server: ServerAddress,
    trust: Trust,
    token: str,
    *,
    device_name: str,
    connect_timeout: float,
) -> Rows:
    """Bring this machine onto the server as a new device of the backed-up account.

    A new device key is generated, its certificate signed with the account
    key from the backup (a linked device's ``account_seed``, else the first
    device's own seed: its key is the account key), as ``qpq device
    approve`` signs one, and registered as ``qpq device link`` registers
    one. The lost device stays a device of the account until it is removed
    (``qpq device remove``); each group is then joined by an external
    commit that adds this device's leaf, which qpq's policy allows a device
    of an account already in the group (docs/protocol.md §7.2). Returns the
    rows with the identity replaced by the new device's.

    Raises:
        LinkError: ``device_name`` is not a valid device name.
        ConnectionFailedError: the server cannot be reached.
        UnauthenticatedError: the server refused the token.
        ForbiddenError: the account is suspended or deleted.
        BackupError: the server names another account for the backup's username.
    """
    check_device_name(device_name)
    columns = BACKUP_TABLES["identity"]
    (row,) = rows["identity"]
    account_seed = row[columns.index("account_seed")] or row[columns.index("seed")]
    username = str(row[columns.index("username")])
    account = Identity.from_secret_bytes(account_seed)
    device = Identity.generate()
    certificate = account.issue_device_certificate(device.public_key, device_name, int(time.time()))
    connection = await Connection.open(server, trust, token, connect_timeout=connect_timeout)
    try:
        await connection.authenticate(device.public_key, device.sign)
        # Registration checks the certificate chains to an active account.
        await connection.register_device(certificate)
        if await connection.resolve_user(username) != account.public_key:
            raise BackupError(f"the server names another account {username}: nothing was restored")
    finally:
        await connection.close()
    identity = list(row)
    identity[columns.index("seed")] = device.secret_bytes()
    identity[columns.index("certificate")] = certificate
    identity[columns.index("account_seed")] = account.secret_bytes()
    return {**rows, "identity": [tuple(identity)]}


def _with_settings(rows: Rows, settings: dict[str, str]) -> Rows:
    merged = dict(rows["settings"])
    merged.update(settings)
    return {**rows, "settings": sorted(merged.items())}


def _write_profile(home: Path, state_passphrase: str, rows: Rows) -> None:
    """A new state in ``home`` with ``rows``; on any failure, no state is left behind."""
    store = StateStore.open(home, state_passphrase, create=True)
    try:
        with store.transaction() as tx:
            for table in BACKUP_TABLES:
                tx.restore_rows(table, rows[table])
            # Not held in MLS: each active group is rejoined by external commit.
            for row in rows["groups"]:
                columns = BACKUP_TABLES["groups"]
                if row[columns.index("state")] in _REJOINED:
                    tx.set_needs_rejoin(row[columns.index("group_id")], True)
    except BaseException:
        store.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                (home / f"{STATE_FILE}{suffix}").unlink()
        raise
    store.close()


async def import_backup(
    source: Path,
    backup_passphrase: str,
    home: Path,
    state_passphrase: str | Callable[[], str],
    *,
    server: ServerAddress | None = None,
    trust: Trust | None = None,
    token: str | None = None,
    device_name: str | None = None,
    connect_timeout: float = 5.0,
) -> RestoredProfile:
    """Restore the backup ``source`` into the fresh home ``home``, then rejoin its groups.

    ``state_passphrase`` is the new profile's (or a function asked for it
    once the file has opened, so that a prompt comes after a wrong backup
    passphrase is told). ``server``, ``trust`` and ``token`` override what
    the backup stored (and are stored instead). The profile is a new device
    of the account, named ``device_name`` (default
    :data:`RESTORED_DEVICE_NAME`; :func:`enroll_device`). Nothing
    is written unless the file opens and the server registers the device.

    Raises:
        BackupError: the file does not open (wrong passphrase, changed, truncated).
        LinkError: ``device_name`` is not a valid device name.
        AlreadyInitializedError: ``home`` holds a profile already.
        ConnectionFailedError, UnauthenticatedError, ForbiddenError: the
            server cannot be reached or refuses the account (nothing written).
    """
    if StateStore.exists(home):
        raise AlreadyInitializedError(
            f"{home} already holds a qpq profile: import into a new home (--home)"
        )
    rows, summary = read_backup(source, backup_passphrase)
    if callable(state_passphrase):
        state_passphrase = state_passphrase()
    settings: dict[str, str] = dict(rows["settings"])
    if server is None:
        if not settings.get(SERVER_SETTING):
            raise BackupError("the backup names no server: give --server HOST:PORT")
        server = ServerAddress.parse(settings[SERVER_SETTING])
    if trust is None:
        stored = settings.get(TRUST_SETTING)
        trust = Trust.from_setting(stored) if stored else Trust.from_options(None, None)
    if token is None:
        token = settings.get(TOKEN_SETTING, "")
    device_name = device_name or RESTORED_DEVICE_NAME
    rows = await enroll_device(
        rows, server, trust, token, device_name=device_name, connect_timeout=connect_timeout
    )
    rows = _with_settings(
        rows, {SERVER_SETTING: str(server), TRUST_SETTING: trust.to_setting(), TOKEN_SETTING: token}
    )
    # The cursor was the lost device's queue's; the new device's starts empty.
    rows = {**rows, "cursor": []}
    _write_profile(home, state_passphrase, rows)
    client = Client.open(home, state_passphrase)
    try:
        await client.connect(connect_timeout=connect_timeout)
        # One operation: catch up with the server, then settle, which rejoins.
        await client.receive()
        groups = {group.name: group for group in client.groups()}
        device_key = client.identity_key
    except BaseException as error:
        error.add_note("the profile is restored; the next qpq command rejoins its groups")
        raise
    finally:
        await client.close()
    rejoined = tuple(
        name for name in summary.groups if name in groups and groups[name].epoch is not None
    )
    return RestoredProfile(
        summary=summary,
        rejoined=rejoined,
        not_rejoined=tuple(name for name in summary.groups if name not in rejoined),
        device_name=device_name,
        device_key=device_key,
    )
