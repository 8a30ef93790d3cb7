"""What an account is: its statuses, the records storage returns, and invite codes.

An account is what a registration creates (docs/security.md, "Accounts"):
it has a status (active, suspended, deleted), a creation time and the
invite that admitted it, and the identities that act for it. Today an
account has one identity, whose key is the account key; every per-account
rule resolves the account from the identity (``account_identities``), so
that linked devices can later map several identity keys to one account.

Invite codes are made here (:func:`new_invite_code`): 160 random bits,
shown once and stored only as their SHA-256 (:func:`invite_hash`). A code
is not a password a person chose, so a fast hash suffices: guessing one
means guessing 160 bits.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import secrets
from dataclasses import dataclass

from qpq_proto import AccountStatus as WireStatus

__all__ = [
    "INVITE_PREFIX",
    "AccountRecord",
    "AccountState",
    "AccountUsage",
    "Deleted",
    "InviteRecord",
    "Registered",
    "Registration",
    "Status",
    "StatusChange",
    "StrangerLimit",
    "invite_hash",
    "new_invite_code",
]

#: What every invite code starts with, so that it is recognized as one.
INVITE_PREFIX = "qpqi-"
#: Random bytes in a code: 160 bits (the issue asks for at least 128).
_INVITE_BYTES = 20


class Status(enum.StrEnum):
    """An account's status, as stored."""

    ACTIVE = "active"
    #: The operator suspended it: every call of its identities is refused
    #: (``forbidden``, with the reason) and its connections are closed.
    SUSPENDED = "suspended"
    #: Deleted by its owner or the operator: its data is gone, it left its
    #: groups, and its identities never authenticate again.
    DELETED = "deleted"
    #: Not an account's status but a device's: a device of the account was
    #: removed (``qpq device remove``) and never authenticates again; the
    #: account and its other devices go on.
    REVOKED = "revoked"

    @property
    def wire(self) -> WireStatus:
        """The status as the protocol names it (``Usernames.statuses``)."""
        return _WIRE[self]


_WIRE = {
    Status.ACTIVE: WireStatus.ACTIVE,
    Status.SUSPENDED: WireStatus.SUSPENDED,
    Status.DELETED: WireStatus.DELETED,
    # Names map to account keys, never to a device: not said of a name.
    Status.REVOKED: WireStatus.UNKNOWN,
}


def new_invite_code() -> str:
    """A fresh invite code: the prefix and 160 random bits in base32, in groups of four."""
    text = base64.b32encode(secrets.token_bytes(_INVITE_BYTES)).decode("ascii").rstrip("=")
    return INVITE_PREFIX + "-".join(text[i : i + 4] for i in range(0, len(text), 4))


def invite_hash(code: str) -> bytes:
    """What is stored of a code: the SHA-256 of its canonical form.

    Case, spaces and dashes do not matter (a code read aloud or retyped
    still works); what is left must be the prefix and base32 text.
    """
    text = "".join(code.split()).upper().replace("-", "")
    prefix = INVITE_PREFIX.rstrip("-").upper()
    text = text.removeprefix(prefix)
    return hashlib.sha256(b"qpq invite\x00" + text.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class AccountState:
    """The account an identity acts for, as a connection needs to know it."""

    account_key: bytes
    status: Status
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.status is Status.ACTIVE


@dataclass(frozen=True, slots=True)
class Registration:
    """A RegisterUser, as storage carries it out.

    Attributes:
        identity_key: the proven identity registering.
        username: the name as given.
        invite_hash: the SHA-256 of the invite code given (None: none).
        invite_required: a new account needs a valid invite (``invite`` mode).
        now_ms: the time of the registration.
        cooldown_ms: how long a name given up (a rename) stays held.
        renames_per_day: renames an account may make (a bucket of this
            many refilled over a day; 0: no limit). Each rename holds the
            name given up for the cooldown, so without a bound one account
            could reserve names by the thousand.
    """

    identity_key: bytes
    username: str
    invite_hash: bytes | None
    invite_required: bool
    now_ms: int
    cooldown_ms: int
    renames_per_day: float = 0.0


@dataclass(frozen=True, slots=True)
class Registered:
    """What a registration did: created the account (with the invite that
    admitted it, if any), or renamed an existing one."""

    account_key: bytes
    created: bool
    invite_id: int | None = None


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """An account as the operator sees it (``qpq-server accounts``)."""

    account_key: bytes
    #: None once deleted (the name waits out its cooldown, then is free).
    username: str | None
    status: Status
    reason: str
    created_at_ms: int
    changed_at_ms: int
    invite_id: int | None
    invite_note: str


@dataclass(frozen=True, slots=True)
class AccountUsage:
    """What one account holds on the server (``qpq-server accounts show``)."""

    groups: int
    groups_created: int
    queued_messages: int
    queued_bytes: int
    key_packages: int


@dataclass(frozen=True, slots=True)
class InviteRecord:
    """An invite code as stored (never the code itself)."""

    id: int
    max_uses: int
    used: int
    note: str
    created_at_ms: int
    expires_at_ms: int | None
    revoked_at_ms: int | None

    def state(self, now_ms: int) -> str:
        """``usable``, ``used up``, ``expired`` or ``revoked``."""
        if self.revoked_at_ms is not None:
            return "revoked"
        if self.expires_at_ms is not None and self.expires_at_ms <= now_ms:
            return "expired"
        if self.used >= self.max_uses:
            return "used up"
        return "usable"


@dataclass(frozen=True, slots=True)
class StatusChange:
    """An identity whose account's status changed (what nodes poll for)."""

    identity_key: bytes
    status: Status
    reason: str


@dataclass(frozen=True, slots=True)
class Deleted:
    """What deleting an account did: the groups it left, and the members
    whose queues got a deletion notice (to wake)."""

    account_key: bytes
    groups: tuple[bytes, ...]
    notified: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class StrangerLimit:
    """How many people an account may add to groups who share no group with it.

    A token bucket in the database (``account_limits``): ``burst`` at once,
    refilled at ``per_second``; a commit whose Welcome reaches more such
    people than the bucket holds is refused and nothing is stored.
    """

    account_key: bytes
    burst: float
    per_second: float
