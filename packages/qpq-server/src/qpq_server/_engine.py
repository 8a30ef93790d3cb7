"""Where SQLite and PostgreSQL differ, in one place, and the transaction operations use.

Each storage operation is one plain function ``op(txn, ...)``, written once
(``_ops_*``, ``_cleanup``), in PostgreSQL's SQL with ``?`` placeholders,
run through a :class:`Txn`: a transaction's cursor and its database's
:class:`Engine`, which converts each statement text once (cached):

- psycopg takes ``%s`` placeholders (and a literal ``%`` doubled);
- row locks (``FOR UPDATE [OF t]``, ``FOR SHARE``, ``SKIP LOCKED``) are how
  PostgreSQL nodes writing at once keep each decision right; SQLite's write
  transaction holds the whole file, and its engine drops them;
- PostgreSQL's ``greatest(a, b)`` is SQLite's ``max(a, b)``.

A list of keys is one array parameter on PostgreSQL and chunks of
placeholders on SQLite (:meth:`Txn.in_list`). Where SQL truly differs
beyond that, an operation branches on ``txn.engine.arrays``: a fan-out's
one statement with data-modifying ``WITH`` and ``pg_notify``, and queue
rows created from one array. The model is Synapse's storage engines.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from qpq_server._errors import StorageError

__all__ = ["POSTGRES", "SQLITE", "Engine", "Txn"]

#: Keys bound in one SQLite statement (its limit on parameters is far above).
_SQLITE_LIST = 500
_ROW_LOCK = re.compile(r" FOR (?:UPDATE|SHARE)(?: OF \w+)?(?: SKIP LOCKED)?")


@functools.lru_cache(maxsize=1024)
def _postgres_dialect(query: str) -> str:
    return query.replace("%", "%%").replace("?", "%s")


@functools.lru_cache(maxsize=1024)
def _sqlite_dialect(query: str) -> str:
    return _ROW_LOCK.sub("", query).replace("greatest(", "max(")


@dataclass(frozen=True, slots=True)
class Engine:
    """One database's dialect.

    Attributes:
        name: ``sqlite`` or ``postgresql``.
        arrays: PostgreSQL: arrays, data-modifying ``WITH``, row locks.
        sql: a statement (``?`` placeholders, PostgreSQL's SQL) as this database takes it.
    """

    name: str
    arrays: bool
    sql: Callable[[str], str]


SQLITE = Engine("sqlite", arrays=False, sql=_sqlite_dialect)
POSTGRES = Engine("postgresql", arrays=True, sql=_postgres_dialect)


class Txn:
    """A transaction's cursor, speaking its engine's dialect.

    One cursor: read a statement's rows (:meth:`one`, :meth:`all`) before
    the next one runs.
    """

    __slots__ = ("_cursor", "_sql", "engine")

    def __init__(self, cursor: Any, engine: Engine) -> None:
        # Both drivers' cursors return rows as tuples.
        self._cursor = cursor
        self._sql = engine.sql
        self.engine = engine

    def execute(self, query: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; the DB-API cursor (its rows, ``rowcount``)."""
        return self._cursor.execute(self._sql(query), params)

    def executemany(self, query: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each of ``rows`` (pipelined by psycopg)."""
        self._cursor.executemany(self._sql(query), rows)

    def one(self, query: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._cursor.execute(self._sql(query), params).fetchone()
        return row

    def all(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._cursor.execute(self._sql(query), params).fetchall()
        return rows

    def value(self, query: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the row ``query`` always returns (a count, an id)."""
        row = self.one(query, params)
        if row is None:
            raise StorageError("a statement that returns a row returned none")
        return row[0]

    def changed(self, query: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; how many rows it changed."""
        return int(self.execute(query, params).rowcount)

    def lock_rows(self, query: str, params: Sequence[Any] = ()) -> None:
        """Lock the rows ``query`` selects until COMMIT (SQLite: nothing to do)."""
        if self.engine.arrays:
            self.execute(f"{query} FOR UPDATE", params)

    def in_list(self, column: str, values: Sequence[Any]) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """``column`` among ``values``: (SQL, parameters) for each chunk of them."""
        if self.engine.arrays:
            yield f"{column} = ANY(?)", (list(values),)
            return
        for start in range(0, len(values), _SQLITE_LIST):
            chunk = tuple(values[start : start + _SQLITE_LIST])
            yield f"{column} IN ({', '.join('?' * len(chunk))})", chunk
