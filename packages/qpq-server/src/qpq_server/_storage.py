"""The storage interface that handlers use, and the records it trades in.

A backend implements :class:`Storage`; handlers never see SQL. Every method
that changes more than one row is one transaction in the backend, and the
domain outcomes (queue full, epoch conflict) are raised as the protocol's
``ServiceError`` subclasses so handlers can pass them through unchanged.
Times are passed in (unix milliseconds or seconds), never read inside, so
expiry is testable without waiting.

A recipient's seq follows the clock: each new one is ``max(last seq + 1,
now in microseconds)`` (:func:`seq_floor`). So a queue row that was removed
while empty and idle (:meth:`Storage.remove_unused`) and is created again
starts above every seq it handed out before, with no record of it kept; a
client that sees a seq go backwards can only be facing a server that lost
its data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

from qpq_core import ChangeSet
from qpq_proto import DEFAULT_CIPHERSUITE, Endpoint, Envelope

if TYPE_CHECKING:
    from qpq_server._accounts import (
        AccountRecord,
        AccountState,
        AccountUsage,
        Deleted,
        InviteRecord,
        Registered,
        Registration,
        Status,
        StatusChange,
        StrangerLimit,
    )
    from qpq_server._notifier import DeliveryNotifier
    from qpq_server._ops_devices import DeviceRecord, LinkRequest
    from qpq_server._ratelimit import RateBuckets

__all__ = [
    "DAY_MS",
    "ClaimLimits",
    "Delivered",
    "Delivery",
    "GroupUpdate",
    "GroupVersion",
    "KeyPackageStock",
    "OnCommit",
    "QueueStats",
    "Queued",
    "Retention",
    "Storage",
    "StoredEndpoints",
    "StoredKeyPackage",
    "Unused",
    "seq_floor",
]

DAY_MS = 24 * 3600 * 1000


def seq_floor(now_ms: int) -> int:
    """The least seq a message queued at ``now_ms`` may get: the time in microseconds."""
    return now_ms * 1000


@dataclass(frozen=True, slots=True)
class StoredKeyPackage:
    """A validated KeyPackage as the directory keeps it, under its ciphersuite."""

    package: bytes = field(repr=False)
    fingerprint: bytes
    not_after: int  # unix seconds
    ciphersuite: int = DEFAULT_CIPHERSUITE  # RFC 9420 code point


@dataclass(frozen=True, slots=True)
class KeyPackageStock:
    """What an identity has stored of one ciphersuite."""

    ciphersuite: int
    count: int  # unexpired single-use packages
    has_last_resort: bool  # an unexpired last-resort package
    last_resort_served: int  # claims it answered since its upload


@dataclass(frozen=True, slots=True)
class ClaimLimits:
    """How fast an identity's KeyPackages may be claimed, whoever claims them.

    Two token buckets, both kept in the database (so they hold across the
    nodes of one PostgreSQL database) and charged only for a claim that
    hands a package out: one per target identity (``target_burst`` claims
    at once, refilled at ``target_per_second``), however many identities
    claim, one per (claimer, target) pair (``pair_burst``, refilled at
    ``pair_per_second``), and one per claiming account, whomever it claims.
    A claim a bucket cannot pay is refused ``rateLimited``, never answered
    with the last-resort package.
    """

    target_burst: float
    target_per_second: float
    pair_burst: float
    pair_per_second: float
    #: The claimer's account, whatever it claims: ``account_burst`` claims at
    #: once, refilled at ``account_per_second`` (0: no such bucket).
    account_burst: float = 0.0
    account_per_second: float = 0.0


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
    The payload is stored only while the queued payloads of the sender's
    account (each counted once, however many recipients it has, until the
    last one acknowledged it) stay within ``quota_bytes``; else nothing is
    stored and the call fails with QuotaExceededError.
    """

    sender: bytes
    payload: bytes = field(repr=False)
    now_ms: int
    expires_ms: int
    depth_cap: int
    share_cap: int
    quota_bytes: int
    #: The account the payload's bytes are charged to (None: the sender's
    #: identity key, which is its account key while an account has one identity).
    account: bytes | None = None

    @property
    def quota_key(self) -> bytes:
        """Whose quota row the payload is charged to."""
        return self.sender if self.account is None else self.account


@dataclass(frozen=True, slots=True)
class Queued:
    """What every recipient's envelope of one fan-out shares: all of it but the seq."""

    sender: bytes
    payload: bytes = field(repr=False)
    enqueued_at_ms: int
    group_id: bytes
    group_info_digest: bytes | None

    def envelope(self, seq: int) -> Envelope:
        """The envelope as queued for the recipient that got ``seq``."""
        return Envelope(
            seq=seq,
            sender=self.sender,
            payload=self.payload,
            enqueued_at_ms=self.enqueued_at_ms,
            group_id=self.group_id,
            group_info_digest=self.group_info_digest or b"",
        )


@dataclass(frozen=True, slots=True)
class Delivered:
    """What a fan-out did: who got the message (with its seq), who got a gap notice.

    ``queued`` is what each of ``seqs``' envelopes holds besides its seq,
    when one message went to all of them (None when it was more than one,
    a commit and its Welcome): a subscription can push it without reading
    the queue back.
    """

    seqs: dict[bytes, int]
    gaps: tuple[bytes, ...]
    #: Not part of what was delivered to whom: left out of comparisons.
    queued: Queued | None = field(default=None, compare=False)

    @property
    def woken(self) -> tuple[bytes, ...]:
        """Every recipient with something new in its queue."""
        return (*self.seqs, *self.gaps)


#: Called on the event loop once a fan-out committed, whatever became of its
#: caller, with what it delivered and whether the deliveries of this storage
#: reach it in commit order (SQLCipher's one writer: each recipient's seqs
#: in order) or not (several PostgreSQL connections).
OnCommit = Callable[[Delivered, bool], None]


class GroupVersion(NamedTuple):
    """Which stored state of a group: its epoch, and the changes stored within it.

    Every stored change moves it forward: a proposal to ``(epoch, version +
    1)``, a commit to ``(epoch + 1, 0)``. So one pair names one state, and a
    node that cached a state knows it is stale when the pair differs.
    """

    epoch: int
    version: int


@dataclass(frozen=True, slots=True)
class GroupUpdate:
    """How a verified proposal or commit changes a group's stored state.

    Attributes:
        from_epoch: the epoch it was verified against.
        from_version: the version (within ``from_epoch``) it was verified
            against; the update applies only while the group is still at
            ``(from_epoch, from_version)``.
        epoch: the epoch afterwards (``from_epoch + 1`` for a commit).
        state: the group state's change set (key, new value or None).
        members: the roster afterwards, for a commit; None for a proposal.
        group_info: the GroupInfo of the new epoch, for a commit.
        commit_hash: SHA-256 of the commit, remembered for its epoch.
        group_info_digest: for a commit, the facts digest of ``group_info``
            (``qpq_core.GroupInfoFacts.digest``), delivered with the commit
            so that members compare it with their own view of the epoch.
    """

    from_epoch: int
    from_version: int
    epoch: int
    state: ChangeSet = field(repr=False)
    members: tuple[bytes, ...] | None = None
    group_info: bytes | None = field(default=None, repr=False)
    commit_hash: bytes | None = None
    group_info_digest: bytes | None = None

    @property
    def version(self) -> GroupVersion:
        """The group's version once this update is stored."""
        if self.epoch != self.from_epoch:
            return GroupVersion(self.epoch, 0)
        return GroupVersion(self.epoch, self.from_version + 1)


@dataclass(frozen=True, slots=True)
class Retention:
    """How long rows nobody uses stay (milliseconds).

    Attributes:
        queue_idle_ms: an empty queue row whose last seq is older than this is
            removed. It must exceed any plausible step of the clock back, or
            a recreated row could hand out a seq its recipient already saw.
        group_idle_ms: a group nobody published to for this long is removed
            with its state, roster and accepted commits.
        endpoints_ms: published P2P endpoints not renewed for this long.
        username_hold_ms: the keys of a username given up are held for its
            former owner this long (``username_cooldown_days``), then released.
    """

    group_idle_ms: int
    queue_idle_ms: int = 30 * DAY_MS
    endpoints_ms: int = 30 * DAY_MS
    username_hold_ms: int = 30 * DAY_MS


@dataclass(frozen=True, slots=True)
class Unused:
    """What one :meth:`Storage.remove_unused` removed, by kind of row."""

    queues: int = 0
    groups: int = 0
    endpoints: int = 0
    #: Keys of names given up whose hold ended (a name has one or two keys).
    username_holds: int = 0
    #: Shared rate-limit buckets full again (only where nodes share a database).
    rate_limits: int = 0
    #: KeyPackage claim buckets full again (:class:`ClaimLimits`).
    key_package_claims: int = 0
    #: Per-account buckets full again (``account_limits``).
    account_limits: int = 0


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

    With several writers, the seqs of one recipient must become visible in
    seq order: a seq is taken from the recipient's own queue row, under that
    row's lock until the transaction ends (an update of the row), never from
    a shared sequence whose values can commit out of order. The queued-bytes
    quota is checked and charged in one conditional update of the sender's
    counter row, so concurrent publishes of one sender cannot pass it
    together; the KeyPackage and group-count quotas are checked by counting
    and may be passed by at most one concurrent request's worth.
    """

    backend: str
    #: Where per-identity rate limits live when several nodes share this
    #: database (so that they hold across nodes); None where one process is
    #: the only server of the database and keeps them in memory.
    rate_buckets: RateBuckets | None

    async def check(self) -> str:
        """``"ok"``, or a short reason why the store cannot serve."""
        ...

    async def close(self) -> None:
        """Flush and close; later calls fail."""
        ...

    async def watch_deliveries(self, notifier: DeliveryNotifier) -> None:
        """Wake ``notifier``'s waiters for deliveries that other processes store.

        Returns once it is in effect. A no-op where this process is the
        only writer (its handlers notify what they store themselves).
        """
        ...

    # ---- users ----------------------------------------------------------

    async def register_username(
        self, identity_key: bytes, username: str, *, now_ms: int, cooldown_ms: int
    ) -> str:
        """Bind ``username`` to the identity; replaces its old name.

        Stores the name's keys (:func:`qpq_server._usernames.username_keys`)
        in the same transaction as the check that no other identity holds
        any of them, so of two look-alikes registered at once exactly one is
        stored. The old name's keys are held for the identity: for
        ``cooldown_ms`` after ``now_ms`` no other identity may take them.
        The same name again (equal up to case) changes nothing. Returns the
        spelling now registered. Raises AlreadyExistsError if another
        identity holds one of the keys, or gave it up less than
        ``cooldown_ms`` ago.
        """
        ...

    async def resolve_username(self, username: str) -> bytes | None:
        """The identity whose current name shares a key with ``username``.

        Its folded key wins over the key of its look when they name two
        identities (see ``_ops_usernames.resolve_username``).
        """
        ...

    async def resolve_identity(self, identity_key: bytes) -> str | None:
        """The username of an identity, as registered."""
        ...

    async def resolve_identities(self, identity_keys: tuple[bytes, ...]) -> dict[bytes, str]:
        """The usernames of those of ``identity_keys`` that have one, by key."""
        ...

    # ---- key directory --------------------------------------------------

    async def add_key_packages(
        self,
        identity_key: bytes,
        packages: list[StoredKeyPackage],
        max_stored: int,
        max_bytes: int,
    ) -> None:
        """Store single-use packages; InvalidArgumentError above ``max_stored`` of
        them, QuotaExceededError above ``max_bytes`` of their bytes (nothing stored)."""
        ...

    async def set_last_resort(self, identity_key: bytes, package: StoredKeyPackage) -> None:
        """Store or replace the identity's last-resort package of its ciphersuite."""
        ...

    async def claim_key_package(
        self,
        identity_key: bytes,
        now_s: int,
        *,
        ciphersuite: int = DEFAULT_CIPHERSUITE,
        claimer: bytes | None = None,
        limits: ClaimLimits | None = None,
        account: bytes | None = None,
    ) -> bytes | None:
        """Remove and return one unexpired package of ``ciphersuite``, else that
        suite's last-resort one (kept, and counted as served).

        With ``limits`` (and the ``claimer``), RateLimitedError when the
        target's, the (claimer, target) pair's or the claimer's ``account``'s
        claim bucket is empty: nothing is claimed or charged. A claim that
        finds no package is not charged either.
        """
        ...

    async def last_resort_served(
        self, identity_key: bytes, ciphersuite: int = DEFAULT_CIPHERSUITE
    ) -> int:
        """How many claims the identity's last-resort package of ``ciphersuite``
        answered since its upload."""
        ...

    async def count_key_packages(self, identity_key: bytes, now_s: int) -> tuple[int, bool]:
        """Unexpired single-use packages of every suite, and whether an unexpired
        last-resort of any suite exists."""
        ...

    async def key_package_stock(
        self, identity_key: bytes, now_s: int
    ) -> tuple[KeyPackageStock, ...]:
        """What the identity has stored, one entry per ciphersuite it has an
        unexpired package or last resort of, by code point."""
        ...

    # ---- groups ---------------------------------------------------------

    async def create_group(
        self,
        group_id: bytes,
        *,
        creator: bytes,
        epoch: int,
        members: tuple[bytes, ...],
        state: ChangeSet,
        group_info: bytes,
        now_ms: int,
        max_created: int,
    ) -> None:
        """Register a group's verified public state.

        AlreadyExistsError if the id is taken; QuotaExceededError if
        ``creator`` has ``max_created`` groups already (a group counts until
        it is removed as unused).
        """
        ...

    async def group_version(self, group_id: bytes) -> GroupVersion | None:
        """The group's current epoch and version, or None for an unknown group."""
        ...

    async def group_state(
        self, group_id: bytes
    ) -> tuple[GroupVersion, list[tuple[bytes, bytes]]] | None:
        """The group's version and every row of its stored public state (one snapshot)."""
        ...

    async def group_info(self, group_id: bytes) -> tuple[int, bytes] | None:
        """The group's epoch and the latest GroupInfo a member signed."""
        ...

    async def replace_group_info(self, group_id: bytes, *, epoch: int, group_info: bytes) -> None:
        """Serve ``group_info`` for the group's epoch from now on, if it is still ``epoch``.

        The caller verified it against that epoch's state. NotFoundError for
        an unknown group; EpochConflictError (naming the group's epoch) when
        the group moved on, and nothing is changed.
        """
        ...

    async def group_members(self, group_id: bytes) -> tuple[bytes, ...] | None:
        """The verified roster, or None for an unknown group."""
        ...

    async def accepted_commit(self, group_id: bytes, epoch: int) -> bytes | None:
        """SHA-256 of the commit accepted for ``epoch``, if remembered."""
        ...

    async def send_application(
        self,
        group_id: bytes,
        *,
        epoch: int,
        oldest_epoch: int,
        delivery: Delivery,
        on_commit: OnCommit | None = None,
    ) -> tuple[int, Delivered]:
        """Fan an application message out to every member but its sender, in one transaction.

        Returns the group's epoch and what was delivered; the group counts as
        used at ``delivery.now_ms``. ``on_commit`` gets what was delivered
        once it committed, even if the caller was cancelled meanwhile. NotFoundError for an
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
        external_joiners: tuple[bytes, ...] = (),
        strangers: StrangerLimit | None = None,
        on_commit: OnCommit | None = None,
    ) -> Delivered:
        """Store a verified proposal or commit and fan it out, in one transaction.

        ``on_commit`` as for :meth:`send_application`.

        ``welcome`` is (Welcome, the identities it adds); with ``strangers``,
        those it adds who share no group with the committer are paid from
        the committer's account bucket (RateLimitedError, nothing stored,
        when it cannot). ``external_joiners`` are devices that joined by external
        commit (no Welcome): ForbiddenError, nothing stored, when one is a
        revoked device. Deleted accounts get nothing. EpochConflictError
        when the group is no longer at ``(update.from_epoch,
        update.from_version)``, and nothing is changed: naming the accepted
        commit when the epoch moved on, with the error's ``epoch`` still
        ``update.from_epoch`` when only proposals were stored meanwhile.
        """
        ...

    # ---- delivery -------------------------------------------------------

    async def fetch(
        self, recipient: bytes, *, after_seq: int, limit: int, max_bytes: int, now_ms: int
    ) -> list[Envelope]:
        """Unexpired messages with seq > ``after_seq`` in seq order, at least one
        if any, at most ``limit`` and about ``max_bytes`` of payload."""
        ...

    async def fetch_size(
        self, recipient: bytes, *, after_seq: int, limit: int, max_bytes: int, now_ms: int
    ) -> int:
        """The bytes :meth:`fetch` with these arguments would return now (payloads and
        envelope framing), without reading the payloads: what its answer needs."""
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

    async def resolve_endpoints(
        self, identity_key: bytes, *, requester: bytes
    ) -> StoredEndpoints | None:
        """The identity's endpoints, if it published any and ``requester`` may see them:
        it is the identity, or a member of a group it is in (the verified roster)."""
        ...

    async def delete_account(
        self,
        identity_key: bytes,
        *,
        now_ms: int,
        reason: str = "",
        notice: Delivery | None = None,
    ) -> Deleted:
        """Delete the account of ``identity_key``, in one transaction.

        Removes queue contents, packages, username and endpoints, takes the
        identity off every group's recipients, marks the account deleted
        (its identities never authenticate again) and queues a deletion
        notice (``notice``: its TTL and depth cap) for each other member of
        each group it was in. The queue's seq counter is kept so that a
        seq is never reused. The username's keys are held for the identity
        as on a rename, from ``now_ms``.
        """
        ...

    # ---- accounts and invites --------------------------------------------

    async def account_of(self, identity_key: bytes) -> AccountState | None:
        """The account ``identity_key`` acts for (None: it never registered)."""
        ...

    async def register_account(self, registration: Registration) -> Registered:
        """Create the identity's account (using up its invite) or rename it.

        ForbiddenError when an invite is needed and missing, or the code is
        unknown, revoked, expired or used up, or the account is not active;
        AlreadyExistsError when the name is taken (the invite is not used).
        """
        ...

    async def set_account_status(
        self, account_key: bytes, status: Status, *, reason: str, now_ms: int
    ) -> AccountRecord:
        """Suspend or reactivate an account (NotFoundError: none, or deleted)."""
        ...

    async def name_statuses(
        self, identity_keys: tuple[bytes, ...]
    ) -> dict[bytes, tuple[str, Status | None]]:
        """The username ("" if none) and account status of each key that has either."""
        ...

    async def list_accounts(self) -> list[AccountRecord]:
        """Every account, deleted ones too, oldest first."""
        ...

    async def find_account(self, username: str) -> AccountRecord | None:
        """The account registered under ``username``, found as ResolveUser finds it."""
        ...

    async def account_usage(self, account_key: bytes) -> AccountUsage:
        """What the account holds on the server."""
        ...

    async def account_counts(self) -> dict[Status, int]:
        """Accounts by status."""
        ...

    async def account_version(self) -> int:
        """The counter every account status change moves."""
        ...

    async def status_changes(self, after_version: int) -> list[StatusChange]:
        """Identities whose account's status changed after ``after_version``."""
        ...

    # ---- devices and link mailboxes (qpq_server._ops_devices) -------------

    async def register_device(
        self,
        device_key: bytes,
        account_key: bytes,
        *,
        name: str,
        certificate: bytes,
        issued_at_ms: int,
    ) -> None:
        """Record a device of an account, its certificate verified (ForbiddenError:
        the account is not active, the key is another account's, or revoked)."""
        ...

    async def list_devices(self, account_key: bytes) -> list[DeviceRecord]:
        """The current devices of an active account (NotFoundError: none)."""
        ...

    async def revoke_device(self, account_key: bytes, device_key: bytes, *, now_ms: int) -> None:
        """Revoke a device of the account (NotFoundError: no such current device)."""
        ...

    async def post_link_request(
        self,
        mailbox: bytes,
        *,
        username: str,
        device_key: bytes,
        request: bytes,
        now_ms: int,
        expires_at_ms: int,
    ) -> None:
        """Open a link mailbox with a new device's request to join ``username``'s account."""
        ...

    async def read_link_request(
        self, mailbox: bytes, account_key: bytes, *, now_ms: int, tries_per_hour: float
    ) -> LinkRequest | str:
        """The unanswered request in a mailbox for a device of the account it
        names, or why not; each try costs the account (RateLimitedError)."""
        ...

    async def answer_link(
        self, mailbox: bytes, account_key: bytes, approver: bytes, answer: bytes, *, now_ms: int
    ) -> None:
        """Answer a link request once."""
        ...

    async def take_link_answer(self, mailbox: bytes, device_key: bytes, *, now_ms: int) -> bytes:
        """The answer for the requesting device (empty: none yet); taking it empties the box."""
        ...

    async def create_invite(
        self, code_hash: bytes, *, max_uses: int, expires_at_ms: int | None, note: str, now_ms: int
    ) -> InviteRecord:
        """Store a new invite code (its hash)."""
        ...

    async def list_invites(self) -> list[InviteRecord]:
        """Every invite code ever made, by id."""
        ...

    async def revoke_invite(
        self, *, code_hash: bytes | None = None, invite_id: int | None = None, now_ms: int
    ) -> InviteRecord:
        """Revoke a code named by its hash or id (NotFoundError: none)."""
        ...

    # ---- maintenance ----------------------------------------------------

    async def expire(self, *, now_ms: int, now_s: int) -> tuple[int, int]:
        """Delete expired messages and KeyPackages; return both counts.

        In bounded batches, each its own transaction, so other calls run in between.
        """
        ...

    async def remove_unused(self, *, now_ms: int, retention: Retention) -> Unused:
        """Remove rows nobody needs any more, in bounded batches as :meth:`expire`.

        Empty queue rows whose last seq is below ``seq_floor(now_ms -
        retention.queue_idle_ms)``; groups not used since ``now_ms -
        retention.group_idle_ms`` with all their rows; endpoints not
        published since ``now_ms - retention.endpoints_ms``. A queue row is
        removed only if it is still empty and idle in the transaction that
        removes it, so a concurrent enqueue either keeps it or recreates it.
        """
        ...

    async def queue_stats(self) -> QueueStats:
        """Totals for metrics."""
        ...
