"""How a storage operation is written once: a plain method marked as a read or write job.

The mark makes the method awaitable and runs it on the storage thread (a
read on its own, outside any transaction; a write as one job of a batch,
given that batch's cursor, answered after the batch committed). Used by the
SQLCipher backend's operation classes.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from qpq_server._storage import Delivery, StoredKeyPackage

__all__ = ["JobRunner", "read_job", "write_job"]

_T = TypeVar("_T")
_P = ParamSpec("_P")
_S = TypeVar("_S", bound="JobRunner")


class JobRunner(Protocol):
    """What the marked methods' class provides: the hop to the storage thread."""

    async def _run(self, func: Callable[[], _T]) -> _T: ...

    async def _write(self, func: Callable[[Any], _T], size: int = 0) -> _T: ...


#: A storage operation as callers see it: awaitable, without the cursor.
_Operation = Callable[Concatenate[_S, _P], Coroutine[Any, Any, _T]]


def read_job(body: Callable[Concatenate[_S, _P], _T]) -> _Operation[_S, _P, _T]:
    """Mark ``body`` a read: awaited, it runs on the storage thread outside any transaction."""

    @functools.wraps(body)
    async def operation(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await self._run(lambda: body(self, *args, **kwargs))

    return operation


def _payload_bytes(value: object) -> int:
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, StoredKeyPackage):
        return len(value.package)
    if isinstance(value, Delivery):
        return len(value.payload)
    if isinstance(value, list | tuple):
        return sum(_payload_bytes(item) for item in value)
    return 0


def write_job(
    payload: str | None = None,
) -> Callable[[Callable[Concatenate[_S, Any, _P], _T]], _Operation[_S, _P, _T]]:
    """Mark a method ``body(self, cur, ...)`` a write job of the storage thread's group commit.

    Awaited (without ``cur``), it runs in the next write batch with that
    batch's cursor, in its own savepoint, and returns once the batch has
    committed. ``payload`` names the argument whose bytes count towards the
    batch's size bound.
    """

    def mark(body: Callable[Concatenate[_S, Any, _P], _T]) -> _Operation[_S, _P, _T]:
        position = -1
        if payload is not None:
            # Where ``payload`` sits among the caller's positional arguments.
            position = list(inspect.signature(body).parameters).index(payload) - 2

        @functools.wraps(body)
        async def operation(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
            size = 0
            if payload is not None:
                value = kwargs[payload] if payload in kwargs else args[position]
                size = _payload_bytes(value)
            return await self._write(lambda cur: body(self, cur, *args, **kwargs), size)

        return operation

    return mark
