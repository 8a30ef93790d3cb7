"""The state store's groups and their history: one row per group, one per line."""

from __future__ import annotations

from collections.abc import Iterable

from qpq_client._rows import GroupRow, GroupStatus, HistoryRow
from qpq_client._state_base import Reader, Writer, now_ms

__all__ = ["GroupReads", "GroupWrites"]


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
        now = now_ms()
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

    def mark_shown(self, ids: Iterable[int]) -> None:
        self._cursor.executemany("UPDATE history SET shown = 1 WHERE id = ?", [(i,) for i in ids])

    def clear_history(self, group_id: bytes) -> None:
        self._cursor.execute("DELETE FROM history WHERE group_id = ?", (group_id,))


class GroupReads(Reader):
    """Groups and history, as rows."""

    def groups(self) -> list[GroupRow]:
        return [
            GroupRow(bytes(g), n, GroupStatus(s), bool(named), bool(rejoin))
            for g, n, s, named, rejoin in self._db.execute(
                "SELECT group_id, name, state, named, needs_rejoin FROM groups ORDER BY name"
            )
        ]

    def group_by_name(self, name: str) -> GroupRow | None:
        return next((g for g in self.groups() if g.name == name), None)

    def group_by_id(self, group_id: bytes) -> GroupRow | None:
        return next((g for g in self.groups() if g.group_id == group_id), None)

    def history(self, group_id: bytes | None = None, *, unshown: bool = False) -> list[HistoryRow]:
        sql = (
            "SELECT id, group_id, kind, sender, body, sent_at, received_at, seq FROM history"
            " WHERE (? IS NULL OR group_id = ?) AND (? = 0 OR shown = 0) ORDER BY id"
        )
        return [
            HistoryRow(i, bytes(g), k, None if s is None else bytes(s), b, t, r, q)
            for i, g, k, s, b, t, r, q in self._db.execute(sql, (group_id, group_id, int(unshown)))
        ]

    def unique_group_name(self, base: str, *, own: bytes | None = None) -> str:
        """``base``, or ``base-2``, ``base-3``... whichever no other group uses."""
        taken = {g.name for g in self.groups() if g.group_id != own}
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        return name
