"""What every part of the state store shares: the transaction's cursor, the
connection's one-value reads, and the clock rows are stamped with."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["Reader", "Writer", "now_ms"]


def now_ms() -> int:
    return int(time.time() * 1000)


class Writer:
    """Holds the cursor of one transaction; the writes of each kind of row
    (:class:`qpq_client._state.Transaction`'s parts) go through it."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor


class Reader:
    """Reads on the open database (:class:`qpq_client._state.StateStore`'s parts)."""

    _db: Any

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        row = self._db.execute(sql, args).fetchone()
        return None if row is None else row[0]
