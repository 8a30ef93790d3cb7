"""The storage interface that handlers use, and the records it trades in.

A backend implements :class:`Storage`; handlers never see SQL. Every method
that changes more than one row is one transaction in the backend, and the
domain outcomes (queue full, epoch conflict) are raised as the protocol's
``ServiceError`` subclasses so handlers can pass them through unchanged.
Times are passed in (unix milliseconds or seconds), never read inside, so
expiry is testable without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from qpq_proto import Endpoint, Envelope

__all__ = [
    "QueueStats",
    "Storage",
    "StoredEndpoints",
    "StoredKeyPackage",
]


@dataclass(frozen=True, slots=True)
class StoredKeyPackage:
    """A validated KeyPackage as the directory keeps it."""

    package: bytes = field(repr=False)
    fingerprint: bytes
    not_after: int  # unix seconds


@dataclass(frozen=True, slots=True)
class StoredEndpoints:
    """An identity's published P2P endpoints and the address it published from."""

    endpoints: tuple[Endpoint, ...]
    observed: Endpoint | None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Totals for metrics."""

    queues: int
    messages: int
    max_depth: int


class Storage(Protocol):
    """What the delivery service needs from a database.

    Implementations must make each method atomic and durable when it returns
    (an acknowledged enqueue survives ``kill -9``), and must keep claims and
    commit-epoch checks correct under concurrent calls by transactions, not
    by relying on a single caller.
    """

    backend: str

    async def check(self) -> str:
        """``"ok"``, or a short reason why the store cannot serve."""
        ...

    async def close(self) -> None:
        """Flush and close; later calls fail."""
        ...

    # ---- users ----------------------------------------------------------

    async def register_username(self, identity_key: bytes, username: str, key: str) -> str:
        """Bind ``username`` (normalized ``key``) to the identity; replaces its old name.

        Returns the spelling now registered. Raises AlreadyExistsError if
        another identity holds ``key``.
        """
        ...

    async def resolve_username(self, key: str) -> bytes | None:
        """The identity key registered under normalized ``key``."""
        ...

    async def resolve_identity(self, identity_key: bytes) -> str | None:
        """The username of an identity, as registered."""
        ...

    # ---- key directory --------------------------------------------------

    async def add_key_packages(
        self, identity_key: bytes, packages: list[StoredKeyPackage], max_stored: int
    ) -> None:
        """Store single-use packages; InvalidArgumentError above ``max_stored``."""
        ...

    async def set_last_resort(self, identity_key: bytes, package: StoredKeyPackage) -> None:
        """Store or replace the identity's last-resort package."""
        ...

    async def claim_key_package(self, identity_key: bytes, now_s: int) -> bytes | None:
        """Remove and return one unexpired package, else the last-resort one (kept)."""
        ...

    async def count_key_packages(self, identity_key: bytes, now_s: int) -> tuple[int, bool]:
        """Unexpired single-use packages, and whether an unexpired last-resort exists."""
        ...

    # ---- delivery -------------------------------------------------------

    async def enqueue(
        self,
        recipient: bytes,
        sender: bytes,
        payload: bytes,
        *,
        now_ms: int,
        expires_ms: int,
        depth_cap: int,
    ) -> int:
        """Append to a queue; return its new seq. QueueFullError at ``depth_cap``."""
        ...

    async def publish(
        self,
        group_id: bytes,
        *,
        epoch: int,
        is_commit: bool,
        recipients: tuple[bytes, ...],
        sender: bytes,
        payload: bytes,
        now_ms: int,
        expires_ms: int,
        depth_cap: int,
    ) -> dict[bytes, int]:
        """Fan out to every recipient in one transaction; return each one's seq.

        For a commit, EpochConflictError unless no commit at an epoch >= ``epoch``
        was accepted for the group; QueueFullError if any queue is full. Either
        error leaves nothing changed.
        """
        ...

    async def fetch(
        self, recipient: bytes, *, after_seq: int, limit: int, max_bytes: int, now_ms: int
    ) -> list[Envelope]:
        """Unexpired messages with seq > ``after_seq`` in seq order, at least one
        if any, at most ``limit`` and about ``max_bytes`` of payload."""
        ...

    async def ack(self, recipient: bytes, up_to_seq: int) -> int:
        """Delete messages with seq <= ``up_to_seq``; return how many."""
        ...

    # ---- endpoints and accounts ------------------------------------------

    async def publish_endpoints(
        self, identity_key: bytes, endpoints: StoredEndpoints, now_ms: int
    ) -> None:
        """Replace the identity's endpoints."""
        ...

    async def resolve_endpoints(self, identity_key: bytes) -> StoredEndpoints | None:
        """The identity's endpoints, if it published any."""
        ...

    async def delete_account(self, identity_key: bytes) -> None:
        """Remove queue contents, packages, username and endpoints in one transaction.

        The queue's seq counter is kept so that a seq is never reused.
        """
        ...

    # ---- maintenance ----------------------------------------------------

    async def expire(self, *, now_ms: int, now_s: int) -> tuple[int, int]:
        """Delete expired messages and KeyPackages; return both counts."""
        ...

    async def queue_stats(self) -> QueueStats:
        """Totals for metrics."""
        ...
