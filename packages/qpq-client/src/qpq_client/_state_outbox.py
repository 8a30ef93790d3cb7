"""The state store's delivery bookkeeping: the outbox of what is not yet handed
to the server, the cursor of the server's queue (processed and acknowledged
seq), and the digests of application messages and Welcomes already processed."""

from __future__ import annotations

from qpq_client._rows import OutboxKind, OutboxRow, OutboxState
from qpq_client._state_base import Reader, Writer, now_ms

__all__ = ["WELCOME_MEMORY_MS", "OutboxReads", "OutboxWrites"]

#: How long a processed Welcome's digest is kept (one small row per
#: invitation), beyond the 84 days a KeyPackage may live. A copy arriving
#: later still meets the other checks: a Welcome that joined can no longer
#: be opened (the join deleted its KeyPackage's keys, a last-resort one's
#: included), and one that was refused is refused again by the same rules.
WELCOME_MEMORY_MS = 90 * 24 * 3600 * 1000


class OutboxWrites(Writer):
    """The outbox, the queue cursor and the seen digests."""

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
                now_ms(),
            ),
        )
        row_id: int = self._cursor.lastrowid
        return row_id

    def set_outbox_state(self, outbox_id: int, state: OutboxState) -> None:
        self._cursor.execute("UPDATE outbox SET state = ? WHERE id = ?", (state.value, outbox_id))

    def delete_outbox(self, outbox_id: int) -> None:
        self._cursor.execute("DELETE FROM outbox WHERE id = ?", (outbox_id,))

    def set_processed_seq(self, seq: int) -> None:
        self._cursor.execute(
            "UPDATE cursor SET processed_seq = max(processed_seq, ?) WHERE id = 1", (seq,)
        )

    def set_acked_seq(self, seq: int) -> None:
        self._cursor.execute("UPDATE cursor SET acked_seq = max(acked_seq, ?) WHERE id = 1", (seq,))

    def reset_cursor(self) -> None:
        """Forget the server's numbering: its queue for us started again."""
        self._cursor.execute("UPDATE cursor SET processed_seq = 0, acked_seq = 0 WHERE id = 1")

    def add_seen(self, digest: bytes, *, seq: int | None = None) -> None:
        """Remember a processed application message's digest (direct and server copies);
        ``seq``: the server's, for a copy that came through it (None: directly)."""
        self._cursor.execute(
            "INSERT OR IGNORE INTO seen (digest, received_at, seq) VALUES (?, ?, ?)",
            (digest, now_ms(), seq),
        )

    def forget_seen(self, *, acked_seq: int, server_copy_before_ms: int, before_ms: int) -> int:
        """Forget digests no copy of their message can follow any more; how many.

        Every digest older than ``before_ms``; and one that came with a seq at
        or below ``acked_seq`` (the server deleted that copy) once older than
        ``server_copy_before_ms``.
        """
        self._cursor.execute(
            "DELETE FROM seen WHERE received_at < max(?, ?) AND (received_at < ? OR seq <= ?)",
            (server_copy_before_ms, before_ms, before_ms, acked_seq),
        )
        removed: int = self._cursor.rowcount
        return removed

    def add_welcome(self, digest: bytes) -> None:
        """Remember a processed Welcome's digest; forget those older than
        :data:`WELCOME_MEMORY_MS` (bounded by the rate Welcomes arrive at)."""
        now = now_ms()
        self._cursor.execute(
            "INSERT OR IGNORE INTO welcomes (digest, received_at) VALUES (?, ?)", (digest, now)
        )
        self._cursor.execute(
            "DELETE FROM welcomes WHERE received_at < ?", (now - WELCOME_MEMORY_MS,)
        )


class OutboxReads(Reader):
    """The outbox, the queue cursor and the seen digests, as rows and values."""

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
                c,
            )
            for i, k, g, e, p, w, gi, s, c in self._db.execute(
                "SELECT id, kind, group_id, epoch, payload, welcome, group_info,"
                " state, created_at FROM outbox ORDER BY id"
            )
        ]

    def processed_seq(self) -> int:
        return int(self._one("SELECT processed_seq FROM cursor WHERE id = 1"))

    def acked_seq(self) -> int:
        return int(self._one("SELECT acked_seq FROM cursor WHERE id = 1"))

    def seen_count(self) -> int:
        """How many digests are kept."""
        return int(self._one("SELECT count(*) FROM seen"))

    def seen(self, digest: bytes) -> bool:
        """Whether an application message with this digest was processed already."""
        return self._one("SELECT 1 FROM seen WHERE digest = ?", (digest,)) is not None

    def welcome_seen(self, digest: bytes) -> bool:
        """Whether a Welcome with this digest was processed already (whatever came of it)."""
        return self._one("SELECT 1 FROM welcomes WHERE digest = ?", (digest,)) is not None
