"""The rows a profile backup carries, read out of one state and written into a new one.

A backup (:mod:`qpq_client._backup`) holds what a person needs to be
themselves again on another machine: the identity and username, the
settings (server, trust pin, token, policies), the people (contacts,
blocks, pinned keys), the groups with their names and history, the groups
that ended, and the queue cursor. It never holds MLS state (``mls_kv``:
the epoch secrets of past and current epochs, RFC 9420 §9), the outbox,
held invitations or the digests of what was processed: a restored profile
rejoins its groups by external commit and starts from the epoch it joins.

Each table is named with the columns it carries; a row is a tuple of those
columns' values (``bytes``, ``int``, ``str`` or ``None``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qpq_client._state_base import Reader, Writer

__all__ = ["BACKUP_TABLES", "BackupReads", "BackupWrites", "Rows"]

#: Table -> the columns a backup carries, in order. Tables restore in this
#: order. Columns left out start from their defaults in the new profile.
BACKUP_TABLES: dict[str, tuple[str, ...]] = {
    "identity": ("seed", "username", "created_at"),
    "settings": ("name", "value"),
    "contacts": ("identity_key", "username", "contact", "blocked", "deleted"),
    "pins": ("name_key", "username", "identity_key", "verified", "changed_key"),
    "groups": ("group_id", "name", "state", "named", "created_at", "archived_from"),
    "history": (
        "group_id",
        "kind",
        "sender",
        "body",
        "sent_at",
        "received_at",
        "seq",
        "shown",
        "message_id",
        "direct",
    ),
    "ended_groups": ("group_id", "last_epoch"),
    "cursor": ("processed_seq", "acked_seq"),
}

Rows = dict[str, list[tuple[Any, ...]]]


def _plain(value: Any) -> Any:
    # SQLCipher hands BLOBs out as memoryview on some builds: carry bytes.
    return bytes(value) if isinstance(value, memoryview) else value


class BackupReads(Reader):
    """Reads every row a backup carries (part of :class:`~qpq_client._state.StateStore`)."""

    def backup_rows(self) -> Rows:
        """Each of :data:`BACKUP_TABLES`' rows, read in one snapshot."""
        rows: Rows = {}
        self._db.execute("BEGIN")
        try:
            for table, columns in BACKUP_TABLES.items():
                # Table and column names come from the constant above, never from input.
                cursor = self._db.execute(f"SELECT {', '.join(columns)} FROM {table}")  # noqa: S608
                rows[table] = [tuple(_plain(value) for value in row) for row in cursor]
        finally:
            self._db.execute("COMMIT")
        return rows


class BackupWrites(Writer):
    """Writes a backup's rows into a new profile (a part of :class:`._state.Transaction`)."""

    def restore_rows(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` of ``table`` (one of :data:`BACKUP_TABLES`) as they were."""
        columns = BACKUP_TABLES[table]
        if table == "cursor":
            # The new profile has its one cursor row already.
            for processed, acked in rows:
                self._cursor.execute(
                    "UPDATE cursor SET processed_seq = ?, acked_seq = ? WHERE id = 1",
                    (processed, acked),
                )
            return
        marks = ", ".join("?" for _ in columns)
        statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608
        for row in rows:
            self._cursor.execute(statement, tuple(row))
