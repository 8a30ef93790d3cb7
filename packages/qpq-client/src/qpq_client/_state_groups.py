"""The state store's groups and their history: one row per group, one per line.

A group id we left or were removed from and then join again gets a new
entry: the old row and its history move to a random local key
(:meth:`GroupWrites.archive_group`), kept as they were, and the last epoch
we held in it is remembered apart (:meth:`GroupWrites.end_group`), so a
Welcome can never revive it (docs/security.md).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from qpq_client._rows import GroupRow, GroupStatus, HistoryRow
from qpq_client._state_base import Reader, Writer, now_ms

__all__ = ["ARCHIVE_PREFIX", "GroupReads", "GroupWrites"]

#: The start of an archived entry's local key: no MLS group id we hold
#: starts so, as the rest is 16 random bytes no one else knows.
ARCHIVE_PREFIX = b"\x00archived\x00"
#: What a history line can say about a message that arrived directly.
DIRECT_STATES = ("unconfirmed", "withdrawn")

_GROUP_COLUMNS = (
    "group_id, name, state, named, needs_rejoin, wrong_group_info, confirm_epoch, archived_from"
)


class GroupWrites(Writer):
    """Groups (name, status, rejoin flag) and their history lines."""

    def add_group(self, group_id: bytes, name: str, *, named: bool) -> None:
        self._cursor.execute(
            "INSERT INTO groups (group_id, name, state, named, created_at) VALUES (?, ?, ?, ?, ?)",
            (group_id, name, GroupStatus.ACTIVE.value, int(named), now_ms()),
        )

    def rename_group(self, group_id: bytes, name: str) -> None:
        self._cursor.execute(
            "UPDATE groups SET name = ?, named = 1 WHERE group_id = ?", (name, group_id)
        )

    def set_needs_rejoin(self, group_id: bytes, needs_rejoin: bool) -> None:
        self._cursor.execute(
            "UPDATE groups SET needs_rejoin = ? WHERE group_id = ?", (int(needs_rejoin), group_id)
        )

    def set_group_status(self, group_id: bytes, status: GroupStatus) -> None:
        self._cursor.execute(
            "UPDATE groups SET state = ? WHERE group_id = ?", (status.value, group_id)
        )

    def set_wrong_group_info(self, group_id: bytes, epoch: int | None) -> None:
        """Note that the server serves a GroupInfo of ``epoch`` that is not ours (None: done)."""
        self._cursor.execute(
            "UPDATE groups SET wrong_group_info = ? WHERE group_id = ?", (epoch, group_id)
        )

    def set_confirm_epoch(self, group_id: bytes, epoch: int | None) -> None:
        """Note the server's epoch of a group joined below it (None: reached)."""
        self._cursor.execute(
            "UPDATE groups SET confirm_epoch = ? WHERE group_id = ?", (epoch, group_id)
        )

    def end_group(self, group_id: bytes, last_epoch: int) -> None:
        """Remember the last epoch we held in a group we are out of (the highest one)."""
        self._cursor.execute(
            "INSERT INTO ended_groups (group_id, last_epoch) VALUES (?, ?)"
            " ON CONFLICT (group_id) DO UPDATE SET"
            " last_epoch = max(last_epoch, excluded.last_epoch)",
            (group_id, last_epoch),
        )

    def archive_group(self, group_id: bytes) -> None:
        """Move a group's entry and history to a local key of their own, as they are."""
        key = ARCHIVE_PREFIX + secrets.token_bytes(16)
        self._cursor.execute(
            "UPDATE groups SET group_id = ?, archived_from = ? WHERE group_id = ?",
            (key, group_id, group_id),
        )
        self._cursor.execute("UPDATE history SET group_id = ? WHERE group_id = ?", (key, group_id))

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
        direct: str | None = None,
    ) -> int | None:
        """Add a line; None when its sender's ``message_id`` is in the group's history already.

        ``direct``: ``"unconfirmed"`` for a message that arrived directly
        while the server could not confirm its sender.
        """
        now = now_ms()
        self._cursor.execute(
            "INSERT INTO history (group_id, kind, sender, body, sent_at, received_at, seq, shown,"
            " message_id, direct) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (group_id, sender, message_id) DO NOTHING",
            (
                group_id,
                kind,
                sender,
                body,
                sent_at or now,
                now,
                seq,
                int(shown),
                message_id,
                direct,
            ),
        )
        if not self._cursor.rowcount:
            return None
        row_id: int = self._cursor.lastrowid
        return row_id

    def set_direct(self, row_id: int, state: str | None) -> None:
        """Confirm (None) or withdraw a line that arrived directly."""
        if state is not None and state not in DIRECT_STATES:
            raise ValueError(f"not a direct-message state: {state!r}")
        self._cursor.execute("UPDATE history SET direct = ? WHERE id = ?", (state, row_id))

    def delete_history_row(self, row_id: int) -> None:
        self._cursor.execute("DELETE FROM history WHERE id = ?", (row_id,))

    def mark_shown(self, ids: Iterable[int]) -> None:
        self._cursor.executemany("UPDATE history SET shown = 1 WHERE id = ?", [(i,) for i in ids])

    def clear_history(self, group_id: bytes) -> None:
        self._cursor.execute("DELETE FROM history WHERE group_id = ?", (group_id,))


class GroupReads(Reader):
    """Groups and history, as rows."""

    def groups(self) -> list[GroupRow]:
        """Every entry, archived ones included."""
        return self._groups("ORDER BY name", ())

    def _groups(self, clause: str, args: tuple[object, ...]) -> list[GroupRow]:
        return [
            GroupRow(
                bytes(g),
                n,
                GroupStatus(s),
                bool(named),
                bool(rejoin),
                wrong,
                confirm,
                None if archived is None else bytes(archived),
            )
            for g, n, s, named, rejoin, wrong, confirm, archived in self._db.execute(
                f"SELECT {_GROUP_COLUMNS} FROM groups {clause}",  # noqa: S608 - fixed text
                args,
            )
        ]

    # Lookups by key and name are indexed (the primary key, the UNIQUE name):
    # they run for every message received, so they must not read every group.

    def group_by_name(self, name: str) -> GroupRow | None:
        return next(iter(self._groups("WHERE name = ?", (name,))), None)

    def group_by_id(self, group_id: bytes) -> GroupRow | None:
        """The entry of an MLS group id (never an archived one)."""
        rows = self._groups("WHERE group_id = ? AND archived_from IS NULL", (group_id,))
        return next(iter(rows), None)

    def group_by_key(self, key: bytes) -> GroupRow | None:
        """The entry stored under ``key``, archived or not."""
        return next(iter(self._groups("WHERE group_id = ?", (key,))), None)

    def ended_epoch(self, group_id: bytes) -> int | None:
        """The last epoch we held in a group id we left or were removed from."""
        value = self._one("SELECT last_epoch FROM ended_groups WHERE group_id = ?", (group_id,))
        return None if value is None else int(value)

    def last_message_id(self, group_id: bytes, sender: bytes) -> str | None:
        """The message id of the newest line ``sender`` wrote in a group (None: none, or no id)."""
        value = self._one(
            "SELECT message_id FROM history WHERE group_id = ? AND sender = ?"
            " ORDER BY id DESC LIMIT 1",
            (group_id, sender),
        )
        return None if value is None else str(value)

    def history(
        self,
        group_id: bytes | None = None,
        *,
        unshown: bool = False,
        direct: str | None = None,
    ) -> list[HistoryRow]:
        """Lines, oldest first: of one group, those not shown yet, those in a direct state."""
        # Only the conditions asked for, so that SQLite can use the index of
        # each (a `? IS NULL OR ...` form reads the whole history every time).
        conditions: list[str] = []
        args: list[object] = []
        if group_id is not None:
            conditions.append("group_id = ?")
            args.append(group_id)
        if unshown:
            conditions.append("shown = 0")
        if direct is not None:
            conditions.append("direct = ?")
            args.append(direct)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        columns = "id, group_id, kind, sender, body, sent_at, received_at, seq, direct"
        sql = f"SELECT {columns} FROM history {where} ORDER BY id"  # noqa: S608 - fixed text
        return [
            HistoryRow(i, bytes(g), k, None if s is None else bytes(s), b, t, r, q, d)
            for i, g, k, s, b, t, r, q, d in self._db.execute(sql, args)
        ]

    def unique_group_name(self, base: str, *, own: bytes | None = None) -> str:
        """``base``, or ``base-2``, ``base-3``... whichever no other group uses."""
        taken = {g.name for g in self.groups() if g.group_id != own}
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        return name
