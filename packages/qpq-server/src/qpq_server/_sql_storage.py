"""The :class:`~._storage.Storage` both backends share: each operation bound once.

Every storage operation is a plain function over a :class:`~._engine.Txn`
(``_ops_*``, ``_cleanup``). :class:`SqlStorage` binds each, once, as a read
or a write, run by its backend's one runner (Synapse's ``runInteraction``):

- ``_read(op, snapshot=...)``: outside a write transaction; ``snapshot``
  for several statements that must see one state;
- ``_write(op, size)``: in a transaction of its own (SQLCipher: a savepoint
  in the storage thread's group commit; PostgreSQL: a pooled connection,
  run again if the database aborts it for a concurrent one), answered after
  COMMIT; ``size``, the payload bytes, counts against the storage budget.

Why sync functions over a cursor: they run unchanged inside SQLCipher's
batch transaction on its one thread (one savepoint per job, one COMMIT per
batch) and on psycopg's sync connections in worker threads, so neither
backend needs an operation of its own.
"""

from __future__ import annotations

import abc
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

from qpq_server import (
    _cleanup,
    _ops_accounts,
    _ops_devices,
    _ops_groups,
    _ops_invites,
    _ops_keys,
    _ops_queues,
    _ops_usernames,
    _ops_users,
)
from qpq_server._accounts import StrangerLimit
from qpq_server._engine import Txn
from qpq_server._notifier import DeliveryNotifier
from qpq_server._ratelimit import RateBuckets
from qpq_server._storage import (
    Delivered,
    Delivery,
    GroupUpdate,
    OnCommit,
    Retention,
    StoredKeyPackage,
    Unused,
)

__all__ = ["SqlStorage", "reads", "writes"]

_T = TypeVar("_T")
_P = ParamSpec("_P")


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


#: An operation as a method of :class:`SqlStorage`: awaitable, without the ``txn``.
_Method = Callable[Concatenate["SqlStorage", _P], Coroutine[Any, Any, _T]]


def reads(op: Callable[Concatenate[Txn, _P], _T], *, snapshot: bool = False) -> _Method[_P, _T]:
    """``op`` as a method run by ``_read``."""

    async def method(store: SqlStorage, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await store._read(lambda txn: op(txn, *args, **kwargs), snapshot=snapshot)

    return functools.wraps(op)(method)


def writes(op: Callable[Concatenate[Txn, _P], _T], payload: str | None = None) -> _Method[_P, _T]:
    """``op`` as a method run by ``_write``; ``payload``: the argument whose bytes count."""
    # Where ``payload`` sits among the caller's positional arguments.
    at = -1 if payload is None else list(inspect.signature(op).parameters).index(payload) - 1

    async def method(store: SqlStorage, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        size = 0
        if payload is not None:
            size = _payload_bytes(kwargs[payload] if payload in kwargs else args[at])
        return await store._write(lambda txn: op(txn, *args, **kwargs), size)

    return functools.wraps(op)(method)


def _select_one(txn: Txn) -> None:
    txn.one("SELECT 1")


class SqlStorage(abc.ABC):
    """Every storage operation, bound to a backend's runner (see the module docstring)."""

    backend: str
    #: Per-identity rate limits, where several nodes share the database.
    rate_buckets: RateBuckets | None = None
    #: Whether writes commit, and their ``then`` run, in the order they were
    #: submitted (one writer): then each recipient's seqs reach ``on_commit``
    #: in seq order.
    ordered_commits: bool = False

    @abc.abstractmethod
    async def _read(self, op: Callable[[Txn], _T], *, snapshot: bool = False) -> _T:
        """Run ``op`` outside any write transaction (``snapshot``: on one snapshot)."""

    @abc.abstractmethod
    async def _write(
        self, op: Callable[[Txn], _T], size: int = 0, then: Callable[[_T], None] | None = None
    ) -> _T:
        """Run ``op`` in a write transaction; return after COMMIT.

        ``then`` gets the result on the event loop once committed, even if
        the caller was cancelled meanwhile.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and close; later calls fail."""

    @abc.abstractmethod
    async def watch_deliveries(self, notifier: DeliveryNotifier) -> None:
        """Wake ``notifier``'s waiters for deliveries that other processes store."""

    async def check(self) -> str:
        try:
            await self._read(_select_one)
        except Exception as error:  # noqa: BLE001 - any failure is the answer
            return f"unavailable: {error.__class__.__name__}"
        return "ok"

    register_username = writes(_ops_usernames.register_username)
    resolve_username = reads(_ops_usernames.resolve_username)
    resolve_identity = reads(_ops_usernames.resolve_identity)
    resolve_identities = reads(_ops_usernames.resolve_identities)

    add_key_packages = writes(_ops_keys.add_key_packages, payload="packages")
    set_last_resort = writes(_ops_keys.set_last_resort, payload="package")
    claim_key_package = writes(_ops_keys.claim_key_package)
    count_key_packages = reads(_ops_keys.count_key_packages)
    last_resort_served = reads(_ops_keys.last_resort_served)
    key_package_stock = reads(_ops_keys.key_package_stock)

    create_group = writes(_ops_groups.create_group, payload="group_info")
    group_version = reads(_ops_groups.group_version)
    group_state = reads(_ops_groups.group_state, snapshot=True)
    group_info = reads(_ops_groups.group_info)
    replace_group_info = writes(_ops_groups.replace_group_info, payload="group_info")
    group_members = reads(_ops_groups.group_members, snapshot=True)
    accepted_commit = reads(_ops_groups.accepted_commit)

    async def send_application(
        self,
        group_id: bytes,
        *,
        epoch: int,
        oldest_epoch: int,
        delivery: Delivery,
        on_commit: OnCommit | None = None,
    ) -> tuple[int, Delivered]:
        def op(txn: Txn) -> tuple[int, Delivered]:
            return _ops_groups.send_application(
                txn, group_id, epoch=epoch, oldest_epoch=oldest_epoch, delivery=delivery
            )

        then = None if on_commit is None else self._committed(on_commit, lambda value: value[1])
        return await self._write(op, len(delivery.payload), then)

    async def apply_group_update(
        self,
        group_id: bytes,
        update: GroupUpdate,
        *,
        recipients: tuple[bytes, ...],
        delivery: Delivery,
        welcome: tuple[bytes, tuple[bytes, ...]] | None = None,
        external_joiners: tuple[bytes, ...] = (),
        strangers: StrangerLimit | None = None,
        on_commit: OnCommit | None = None,
    ) -> Delivered:
        def op(txn: Txn) -> Delivered:
            return _ops_groups.apply_group_update(
                txn,
                group_id,
                update,
                recipients=recipients,
                delivery=delivery,
                welcome=welcome,
                external_joiners=external_joiners,
                strangers=strangers,
            )

        then = None if on_commit is None else self._committed(on_commit, lambda value: value)
        return await self._write(op, len(delivery.payload), then)

    def _committed(
        self, on_commit: OnCommit, delivered: Callable[[Any], Delivered]
    ) -> Callable[[Any], None]:
        """``on_commit`` as a write's ``then``: what it delivered, and whether in order."""
        in_order = self.ordered_commits

        def then(value: Any) -> None:
            on_commit(delivered(value), in_order)

        return then

    fetch = reads(_ops_queues.fetch)
    fetch_size = reads(_ops_queues.fetch_size)
    ack = writes(_ops_queues.ack)
    queue_stats = reads(_ops_queues.queue_stats)

    publish_endpoints = writes(_ops_users.publish_endpoints)
    resolve_endpoints = reads(_ops_users.resolve_endpoints)

    delete_account = writes(_ops_accounts.delete_account)
    account_of = reads(_ops_accounts.account_of)
    register_account = writes(_ops_accounts.register_account)
    set_account_status = writes(_ops_accounts.set_status)
    name_statuses = reads(_ops_accounts.name_statuses, snapshot=True)
    list_accounts = reads(_ops_accounts.list_accounts)
    find_account = reads(_ops_accounts.find_account)
    account_usage = reads(_ops_accounts.account_usage, snapshot=True)
    account_counts = reads(_ops_accounts.account_counts)
    account_version = reads(_ops_accounts.account_version)
    status_changes = reads(_ops_accounts.status_changes)

    register_device = writes(_ops_devices.register_device)
    list_devices = reads(_ops_devices.list_devices, snapshot=True)
    revoke_device = writes(_ops_devices.revoke_device)
    post_link_request = writes(_ops_devices.post_link_request, payload="request")
    read_link_request = writes(_ops_devices.read_link_request)
    answer_link = writes(_ops_devices.answer_link, payload="answer")
    take_link_answer = writes(_ops_devices.take_link_answer)

    create_invite = writes(_ops_invites.create_invite)
    list_invites = reads(_ops_invites.list_invites)
    revoke_invite = writes(_ops_invites.revoke_invite)

    async def expire(self, *, now_ms: int, now_s: int) -> tuple[int, int]:
        return await _cleanup.expire(self._write, now_ms=now_ms, now_s=now_s)

    async def remove_unused(self, *, now_ms: int, retention: Retention) -> Unused:
        return await _cleanup.remove_unused(self._write, now_ms=now_ms, retention=retention)
