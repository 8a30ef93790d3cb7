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
    "Delivered",
    "Delivery",
    "GroupUpdate",
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
class Delivery:
    """One message to queue for recipients, and the bounds its fan-out obeys.

    A recipient whose queue holds ``depth_cap`` entries, or ``share_cap``
    from this sender, does not get the message: it gets one gap notice for
    the group instead (none while an earlier one is unacknowledged), so one
    full queue never blocks a group and no sender can fill a queue alone.
    """

    sender: bytes
    payload: bytes = field(repr=False)
    now_ms: int
    expires_ms: int
    depth_cap: int
    share_cap: int


@dataclass(frozen=True, slots=True)
class Delivered:
    """What a fan-out did: who got the message (with its seq), who got a gap notice."""

    seqs: dict[bytes, int]
    gaps: tuple[bytes, ...]

    @property
    def woken(self) -> tuple[bytes, ...]:
        """Every recipient with something new in its queue."""
        return (*self.seqs, *self.gaps)


@dataclass(frozen=True, slots=True)
class GroupUpdate:
    """How a verified proposal or commit changes a group's stored state.

    Attributes:
        from_epoch: the epoch it was verified against; the update applies only
            while the stored epoch is still this one.
        epoch: the epoch afterwards (``from_epoch + 1`` for a commit).
        state: the group state's change set (key, new value or None).
        members: the roster afterwards, for a commit; None for a proposal.
        group_info: the GroupInfo of the new epoch, for a commit.
        commit_hash: SHA-256 of the commit, remembered for its epoch.
    """

    from_epoch: int
    epoch: int
    state: tuple[tuple[bytes, bytes | None], ...] = field(repr=False)
    members: tuple[bytes, ...] | None = None
    group_info: bytes | None = field(default=None, repr=False)
    commit_hash: bytes | None = None


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

    async def register_username(
        self, identity_key: bytes, username: str, key: str, *, now_ms: int, cooldown_ms: int
    ) -> str:
        """Bind ``username`` (uniqueness ``key``) to the identity; replaces its old name.

        The old name is held for the identity: for ``cooldown_ms`` after
        ``now_ms`` no other identity may take it. Returns the spelling now
        registered. Raises AlreadyExistsError if another identity holds
        ``key``, or gave it up less than ``cooldown_ms`` ago.
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

    # ---- groups ---------------------------------------------------------

    async def create_group(
        self,
        group_id: bytes,
        *,
        epoch: int,
        members: tuple[bytes, ...],
        state: tuple[tuple[bytes, bytes | None], ...],
        group_info: bytes,
        now_ms: int,
    ) -> None:
        """Register a group's verified public state; AlreadyExistsError if the id is taken."""
        ...

    async def group_epoch(self, group_id: bytes) -> int | None:
        """The group's current epoch, or None for an unknown group."""
        ...

    async def group_state(self, group_id: bytes) -> tuple[int, list[tuple[bytes, bytes]]] | None:
        """The group's epoch and every row of its stored public state."""
        ...

    async def group_info(self, group_id: bytes) -> tuple[int, bytes] | None:
        """The group's epoch and the latest GroupInfo a member signed."""
        ...

    async def group_members(self, group_id: bytes) -> tuple[bytes, ...] | None:
        """The verified roster, or None for an unknown group."""
        ...

    async def accepted_commit(self, group_id: bytes, epoch: int) -> bytes | None:
        """SHA-256 of the commit accepted for ``epoch``, if remembered."""
        ...

    async def send_application(
        self, group_id: bytes, *, epoch: int, oldest_epoch: int, delivery: Delivery
    ) -> tuple[int, Delivered]:
        """Fan an application message out to every member but its sender, in one transaction.

        Returns the group's epoch and what was delivered. NotFoundError for an
        unknown group; ForbiddenError unless the sender is a current member;
        EpochConflictError unless ``epoch`` lies between ``group epoch -
        oldest_epoch`` and the group's epoch.
        """
        ...

    async def apply_group_update(
        self,
        group_id: bytes,
        update: GroupUpdate,
        *,
        recipients: tuple[bytes, ...],
        delivery: Delivery,
        welcome: tuple[bytes, tuple[bytes, ...]] | None = None,
    ) -> Delivered:
        """Store a verified proposal or commit and fan it out, in one transaction.

        ``welcome`` is (Welcome, the identities it adds). EpochConflictError
        (naming the accepted commit) when the group's epoch is no longer
        ``update.from_epoch``: nothing is changed then.
        """
        ...

    # ---- delivery -------------------------------------------------------

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

    async def delete_account(self, identity_key: bytes, *, now_ms: int) -> None:
        """Remove queue contents, packages, username and endpoints in one transaction.

        The queue's seq counter is kept so that a seq is never reused. The
        username is held for the identity as on a rename, from ``now_ms``.
        """
        ...

    # ---- maintenance ----------------------------------------------------

    async def expire(self, *, now_ms: int, now_s: int) -> tuple[int, int]:
        """Delete expired messages and KeyPackages; return both counts."""
        ...

    async def queue_stats(self) -> QueueStats:
        """Totals for metrics."""
        ...
