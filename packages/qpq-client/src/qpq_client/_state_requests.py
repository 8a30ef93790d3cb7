"""The state store's invitations held as requests, and the messages of their
groups held with them until the user accepts or declines."""

from __future__ import annotations

from qpq_client._rows import HeldRow, RequestRow
from qpq_client._state_base import Reader, Writer, now_ms
from qpq_proto import Envelope

__all__ = ["RequestReads", "RequestWrites"]


class RequestWrites(Writer):
    """Requests (a Welcome waiting for a decision) and held messages."""

    def add_request(self, group_id: bytes, inviter: bytes, welcome: bytes) -> None:
        self._cursor.execute(
            "INSERT OR REPLACE INTO requests (group_id, inviter, welcome, received_at)"
            " VALUES (?, ?, ?, ?)",
            (group_id, inviter, welcome, now_ms()),
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

    def count_dropped(self, group_id: bytes) -> None:
        """One more message of a requested group was not held (over its bounds)."""
        self._cursor.execute(
            "UPDATE requests SET dropped = dropped + 1 WHERE group_id = ?", (group_id,)
        )

    def delete_held_row(self, held_id: int) -> None:
        self._cursor.execute("DELETE FROM held WHERE id = ?", (held_id,))

    def delete_held(self, group_id: bytes) -> None:
        self._cursor.execute("DELETE FROM held WHERE group_id = ?", (group_id,))

    def delete_request(self, group_id: bytes) -> None:
        self._cursor.execute("DELETE FROM requests WHERE group_id = ?", (group_id,))


class RequestReads(Reader):
    """Requests and held messages, as rows."""

    def request(self, group_id: bytes) -> RequestRow | None:
        row = self._db.execute(
            "SELECT inviter, welcome, dropped FROM requests WHERE group_id = ?", (group_id,)
        ).fetchone()
        return None if row is None else RequestRow(group_id, bytes(row[0]), bytes(row[1]), row[2])

    def requests(self) -> list[RequestRow]:
        return [
            RequestRow(bytes(g), bytes(i), bytes(w), d)
            for g, i, w, d in self._db.execute(
                "SELECT group_id, inviter, welcome, dropped FROM requests"
            )
        ]

    def request_count(self) -> int:
        return int(self._one("SELECT count(*) FROM requests"))

    def held_usage(self, group_id: bytes) -> tuple[int, int]:
        """Messages held for a requested group, and their payload bytes."""
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM held WHERE group_id = ?",
            (group_id,),
        ).fetchone()
        return int(row[0]), int(row[1])

    def request_bytes(self, *, besides: bytes | None = None) -> int:
        """Bytes held for every request (Welcomes and held payloads), but ``besides``'s."""
        total = self._one(
            "SELECT (SELECT coalesce(sum(length(welcome)), 0) FROM requests"
            " WHERE group_id IS NOT ?)"
            " + (SELECT coalesce(sum(length(payload)), 0) FROM held WHERE group_id IS NOT ?)",
            (besides, besides),
        )
        return int(total)

    def held(self, group_id: bytes) -> list[HeldRow]:
        return [
            HeldRow(i, Envelope(q, bytes(s), bytes(p), t, gap_group_id=bytes(gap)))
            for i, q, s, p, t, gap in self._db.execute(
                "SELECT id, seq, sender, payload, enqueued_at_ms, gap_group_id FROM held"
                " WHERE group_id = ? ORDER BY id",
                (group_id,),
            )
        ]
