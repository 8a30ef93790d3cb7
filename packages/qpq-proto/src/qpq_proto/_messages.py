"""The messages of protocol version 1 as frozen dataclasses.

Each call is a small class; a :class:`Request` carries one of them. Results
are classes too; :data:`RESULT_OF` says which result each call answers with,
and :data:`ACCESS` what it must carry (token, proven identity).
Construction validates what the protocol fixes regardless of configuration
(key lengths, username syntax, integer ranges) and raises
:class:`~qpq_proto.errors.InvalidArgumentError` naming the field. Size caps
that a server may configure are checked by the codec against a
:class:`~qpq_proto.Limits`.
"""

from __future__ import annotations

import enum
import unicodedata
from dataclasses import dataclass, field

from qpq_proto._address import format_host_port
from qpq_proto._limits import DEFAULT_LIMITS, IDENTITY_KEY_BYTES, PROTOCOL_VERSION
from qpq_proto.errors import (
    EpochConflictError,
    ErrorCode,
    InvalidArgumentError,
    ServiceError,
    service_error,
)

_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
NONCE_BYTES = 32
SIGNATURE_BYTES = 64
FINGERPRINT_BYTES = 32
#: A SHA-256 digest (``Envelope.group_info_digest``).
DIGEST_BYTES = 32
#: The longest invite code a RegisterUser may carry (UTF-8 bytes).
MAX_INVITE_BYTES = 128
#: The largest device certificate RegisterDevice takes (a v1 one is at most 206 bytes).
MAX_CERTIFICATE_BYTES = 1024
#: The largest link request or answer a mailbox holds (the answer carries the
#: account's contacts and group list, encrypted).
MAX_LINK_PAYLOAD_BYTES = 256 * 1024


class MessageKind(enum.IntEnum):
    """What a group publish carries; values equal ``MessageKind`` in the schema."""

    APPLICATION = 0
    PROPOSAL = 1
    COMMIT = 2


class AccountStatus(enum.IntEnum):
    """What a server says of the account behind an identity key; values equal
    ``AccountStatus`` in the schema."""

    #: No account (never registered), or not said.
    UNKNOWN = 0
    ACTIVE = 1
    #: Suspended by the operator: its calls are refused until it is unsuspended.
    SUSPENDED = 2
    #: Deleted by its owner or the operator; it never authenticates again.
    DELETED = 3


# ---- field checks ---------------------------------------------------------


def _key(name: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != IDENTITY_KEY_BYTES:
        raise InvalidArgumentError(f"{name} must be {IDENTITY_KEY_BYTES} bytes", field=name)


def _exact(name: str, value: bytes, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise InvalidArgumentError(f"{name} must be {length} bytes", field=name)


def _uint(name: str, value: int, maximum: int, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidArgumentError(
            f"{name} must be an integer in [{minimum}, {maximum}]", field=name
        )


def _nonempty(name: str, value: bytes) -> None:
    if not isinstance(value, bytes) or not value:
        raise InvalidArgumentError(f"{name} must not be empty", field=name)


def _utf8_length(name: str, value: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates have no UTF-8 form
        raise InvalidArgumentError(f"{name} must be valid Unicode text", field=name) from None


def check_username(username: str, max_bytes: int = DEFAULT_LIMITS.max_username_bytes) -> None:
    """Raise InvalidArgumentError unless ``username`` is a valid username.

    Valid: NFC-normalized, 1 to ``max_bytes`` UTF-8 bytes, no whitespace,
    control, format or unassigned characters.
    """
    if not isinstance(username, str) or not username:
        raise InvalidArgumentError("username must not be empty", field="username")
    if unicodedata.normalize("NFC", username) != username:
        raise InvalidArgumentError("username must be NFC-normalized", field="username")
    if _utf8_length("username", username) > max_bytes:
        raise InvalidArgumentError(
            f"username must be at most {max_bytes} UTF-8 bytes", field="username"
        )
    for char in username:
        if char.isspace() or unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl"}:
            raise InvalidArgumentError(
                "username must not contain whitespace or control characters", field="username"
            )


# ---- shared structures ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A network endpoint for P2P rendezvous."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not 0 < _utf8_length("host", self.host) <= 253:
            raise InvalidArgumentError("endpoint host must be 1 to 253 bytes", field="host")
        if any(c.isspace() or unicodedata.category(c) == "Cc" for c in self.host):
            raise InvalidArgumentError("endpoint host must not contain whitespace", field="host")
        _uint("port", self.port, _U16, minimum=1)

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


#: The sender of a gap notice: no identity.
NO_SENDER = bytes(IDENTITY_KEY_BYTES)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One queued message as delivered to its recipient, or a gap notice.

    A gap notice (``gap_group_id`` set, ``payload`` empty, ``sender`` zero)
    says that messages of that group were not queued for the recipient
    because its queue, or the sender's share of it, was full: the recipient
    rejoins the group to catch up.

    ``group_id`` names the group the server delivered the message for (for a
    Welcome, the group whose accepted commit added the recipient); for a
    commit, ``group_info_digest`` is the digest of the GroupInfo the server
    accepted with it (``qpq_core.GroupInfoFacts.digest``), which members
    compare with their own view of the new epoch. Both are empty where the
    server did not set them.

    A deletion notice (``account_deleted`` set: the 32-byte identity key of
    an account that was deleted, ``group_id`` the group it was in, the
    payload the same key, ``sender`` zero) tells a member to remove that
    account's leaves with its next commit.
    """

    seq: int
    sender: bytes
    payload: bytes = field(repr=False)
    enqueued_at_ms: int
    gap_group_id: bytes = b""
    group_id: bytes = b""
    group_info_digest: bytes = b""
    account_deleted: bytes = b""

    def __post_init__(self) -> None:
        _uint("seq", self.seq, _U64, minimum=1)
        _key("sender", self.sender)
        if self.account_deleted:
            _key("account_deleted", self.account_deleted)
            if self.payload != self.account_deleted or self.gap_group_id:
                raise InvalidArgumentError(
                    "a deletion notice carries the deleted identity key as its payload",
                    field="account_deleted",
                )
        if not isinstance(self.group_id, bytes):
            raise InvalidArgumentError("group_id must be bytes", field="group_id")
        if self.group_info_digest:
            _exact("group_info_digest", self.group_info_digest, DIGEST_BYTES)
        if self.gap_group_id:
            if not isinstance(self.gap_group_id, bytes) or self.payload:
                raise InvalidArgumentError(
                    "a gap notice names a group and carries no payload", field="gap_group_id"
                )
        else:
            _nonempty("payload", self.payload)
        _uint("enqueued_at_ms", self.enqueued_at_ms, _U64)

    @property
    def is_gap(self) -> bool:
        """True for a gap notice rather than a message."""
        return bool(self.gap_group_id)

    @property
    def is_deletion(self) -> bool:
        """True for a deletion notice (an account in the group was deleted)."""
        return bool(self.account_deleted)


# ---- calls ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Health:
    """Liveness and version; the only call that needs no token."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """Ask for a nonce bound to this connection, to prove an identity key."""


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Prove the identity key by signing the connection's challenge transcript."""

    identity_key: bytes
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _key("identity_key", self.identity_key)
        _exact("signature", self.signature, SIGNATURE_BYTES)


def check_invite(invite: str) -> None:
    """Raise InvalidArgumentError unless ``invite`` is empty or could be an invite code.

    At most :data:`MAX_INVITE_BYTES` UTF-8 bytes, no whitespace or control
    characters; whether the code exists is the server's to say.
    """
    if not isinstance(invite, str):
        raise InvalidArgumentError("invite must be text", field="invite")
    if _utf8_length("invite", invite) > MAX_INVITE_BYTES:
        raise InvalidArgumentError(
            f"invite must be at most {MAX_INVITE_BYTES} UTF-8 bytes", field="invite"
        )
    if any(c.isspace() or unicodedata.category(c) in {"Cc", "Cf"} for c in invite):
        raise InvalidArgumentError(
            "invite must not contain whitespace or control characters", field="invite"
        )


@dataclass(frozen=True, slots=True)
class RegisterUser:
    """Register a username for the proven identity.

    With no account yet, this creates it: where the server registers by
    invitation, ``invite`` must be a code its operator gave out (used up
    in the same transaction). With an account, it renames it (``invite``
    is then ignored). The code never appears in ``repr``.
    """

    username: str
    invite: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        check_username(self.username)
        check_invite(self.invite)


@dataclass(frozen=True, slots=True)
class ResolveUser:
    """Username to identity key."""

    username: str

    def __post_init__(self) -> None:
        check_username(self.username)


@dataclass(frozen=True, slots=True)
class ResolveIdentity:
    """Identity key to username."""

    identity_key: bytes

    def __post_init__(self) -> None:
        _key("identity_key", self.identity_key)


@dataclass(frozen=True, slots=True)
class ResolveIdentities:
    """Identity keys to usernames, many in one call (see :class:`Usernames`)."""

    identity_keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.identity_keys, tuple) or not self.identity_keys:
            raise InvalidArgumentError(
                "identity_keys must be a non-empty tuple", field="identity_keys"
            )
        for key in self.identity_keys:
            _key("identity_keys", key)


@dataclass(frozen=True, slots=True)
class UploadKeyPackages:
    """Upload a batch of single-use KeyPackages (TLS-serialized MLSMessages)."""

    packages: tuple[bytes, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.packages, tuple) or not self.packages:
            raise InvalidArgumentError("packages must be a non-empty tuple", field="packages")
        for package in self.packages:
            _nonempty("packages", package)


@dataclass(frozen=True, slots=True)
class UploadLastResort:
    """Upload or replace the last-resort KeyPackage (served only when none are left)."""

    package: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _nonempty("package", self.package)


#: The default MLS ciphersuite's code point (RFC 9420 §17.1, 0x0001): what
#: ``ciphersuite=0`` means in a claim, and what the top-level fields of
#: ``KeyPackageCount`` count.
DEFAULT_CIPHERSUITE = 0x0001


@dataclass(frozen=True, slots=True)
class FetchKeyPackage:
    """Claim one KeyPackage of an identity, of one MLS ciphersuite.

    ``ciphersuite`` is the RFC 9420 code point a group of the claimer's takes
    (a group accepts only KeyPackages of its own suite); 0 means the default
    suite 0x0001, as a client from before suites sends.
    """

    identity_key: bytes
    ciphersuite: int = 0

    def __post_init__(self) -> None:
        _key("identity_key", self.identity_key)
        _uint("ciphersuite", self.ciphersuite, _U16)

    @property
    def suite(self) -> int:
        """The ciphersuite claimed, 0 read as the default suite."""
        return self.ciphersuite or DEFAULT_CIPHERSUITE


@dataclass(frozen=True, slots=True)
class CountKeyPackages:
    """How many unclaimed KeyPackages the proven identity has on the server."""


@dataclass(frozen=True, slots=True)
class Publish:
    """Send one group message; the server verifies it and fans it out by the roster.

    An application message (MLS PrivateMessage) goes to every other current
    member; a proposal or commit (MLS PublicMessage) is verified against the
    group's state first. A commit carries the GroupInfo of the epoch it
    creates and, when it adds members, their Welcome.
    """

    group_id: bytes
    epoch: int
    kind: MessageKind
    payload: bytes = field(repr=False)
    welcome: bytes = field(default=b"", repr=False)
    group_info: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        _nonempty("group_id", self.group_id)
        _uint("epoch", self.epoch, _U64)
        if not isinstance(self.kind, MessageKind):
            raise InvalidArgumentError("kind must be a MessageKind", field="kind")
        _nonempty("payload", self.payload)
        for name in ("welcome", "group_info"):
            if not isinstance(getattr(self, name), bytes):
                raise InvalidArgumentError(f"{name} must be bytes", field=name)
        if self.kind is not MessageKind.COMMIT and (self.welcome or self.group_info):
            raise InvalidArgumentError(
                "only a commit carries a Welcome or a GroupInfo", field="group_info"
            )


@dataclass(frozen=True, slots=True)
class CreateGroup:
    """Register a new group on the server from its epoch-0 GroupInfo.

    The GroupInfo carries the ratchet tree and is signed by the creator, the
    proven identity and the group's only member. A group id is taken once.
    """

    group_info: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _nonempty("group_info", self.group_info)


@dataclass(frozen=True, slots=True)
class FetchGroupInfo:
    """The group's latest GroupInfo and ratchet tree, for a member that must rejoin."""

    group_id: bytes

    def __post_init__(self) -> None:
        _nonempty("group_id", self.group_id)


@dataclass(frozen=True, slots=True)
class RegisterDevice:
    """Register the caller's proven key as a device of the account its
    ``certificate`` (a ``qpq_core.DeviceCertificate``) names."""

    certificate: bytes

    def __post_init__(self) -> None:
        _nonempty("certificate", self.certificate)
        if len(self.certificate) > MAX_CERTIFICATE_BYTES:
            raise InvalidArgumentError(
                f"certificate exceeds {MAX_CERTIFICATE_BYTES} bytes", field="certificate"
            )


@dataclass(frozen=True, slots=True)
class ListDevices:
    """The current devices of an account (see :class:`Devices`)."""

    account_key: bytes

    def __post_init__(self) -> None:
        _key("account_key", self.account_key)


@dataclass(frozen=True, slots=True)
class RevokeDevice:
    """Revoke another device of the caller's account."""

    device_key: bytes

    def __post_init__(self) -> None:
        _key("device_key", self.device_key)


@dataclass(frozen=True, slots=True)
class PostLink:
    """Post to a link mailbox: a new device's request (``username``: the
    account it asks to join), or the approving device's answer (no username:
    the caller's account)."""

    mailbox: bytes
    username: str
    payload: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _exact("mailbox", self.mailbox, 32)
        if self.username:
            check_username(self.username)
        _nonempty("payload", self.payload)
        if len(self.payload) > MAX_LINK_PAYLOAD_BYTES:
            raise InvalidArgumentError(
                f"payload exceeds {MAX_LINK_PAYLOAD_BYTES} bytes", field="payload"
            )


@dataclass(frozen=True, slots=True)
class FetchLink:
    """Read a link mailbox: the request (approver) or the answer (new device)."""

    mailbox: bytes

    def __post_init__(self) -> None:
        _exact("mailbox", self.mailbox, 32)


@dataclass(frozen=True, slots=True)
class ReplaceGroupInfo:
    """Replace the GroupInfo the server serves for the group's current epoch.

    A member sends its own, signed by its own leaf, after the one that came
    with the last commit did not match the epoch it derived (its
    ``external_pub`` is what a server cannot check). The server checks what
    it can against its state: current epoch, the caller's leaf, the group
    context and confirmation tag.
    """

    group_id: bytes
    group_info: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _nonempty("group_id", self.group_id)
        _nonempty("group_info", self.group_info)


@dataclass(frozen=True, slots=True)
class Fetch:
    """Read up to ``limit`` queued messages (they stay until acknowledged)."""

    limit: int

    def __post_init__(self) -> None:
        _uint("limit", self.limit, _U32, minimum=1)


@dataclass(frozen=True, slots=True)
class FetchWait:
    """Like Fetch, but wait up to ``timeout_ms`` for a first message."""

    limit: int
    timeout_ms: int

    def __post_init__(self) -> None:
        _uint("limit", self.limit, _U32, minimum=1)
        _uint("timeout_ms", self.timeout_ms, _U32)


@dataclass(frozen=True, slots=True)
class Ack:
    """Delete every queued message with ``seq <= up_to_seq``."""

    up_to_seq: int

    def __post_init__(self) -> None:
        _uint("up_to_seq", self.up_to_seq, _U64)


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Open a push stream: the queue's backlog, then each new message."""


@dataclass(frozen=True, slots=True)
class SubscribeWithAcks:
    """Subscribe, and acknowledge on the same stream (docs/protocol.md §2).

    The client keeps its side of the stream open after the request and
    writes each acknowledgement onto it as a Request carrying an
    :class:`Ack`; the server confirms each it applied with an
    :class:`Acked` event. The client's FIN ends the subscription.
    """


@dataclass(frozen=True, slots=True)
class PublishEndpoints:
    """Publish the proven identity's P2P endpoints (replaces earlier ones)."""

    endpoints: tuple[Endpoint, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.endpoints, tuple) or not all(
            isinstance(e, Endpoint) for e in self.endpoints
        ):
            raise InvalidArgumentError("endpoints must be a tuple of Endpoint", field="endpoints")


@dataclass(frozen=True, slots=True)
class ResolveEndpoints:
    """A peer's published endpoints plus the address the server observed."""

    identity_key: bytes

    def __post_init__(self) -> None:
        _key("identity_key", self.identity_key)


@dataclass(frozen=True, slots=True)
class DeleteAccount:
    """Remove the proven identity's queue, KeyPackages, username and endpoints."""


# ---- peer calls (between clients, ALPN qpq-p2p/1; a server refuses them) ----


@dataclass(frozen=True, slots=True)
class PeerChallenge:
    """Ask the listening peer for a nonce bound to this connection."""


@dataclass(frozen=True, slots=True)
class PeerAuthenticate:
    """The dialing peer proves its identity key and sends its own fresh nonce.

    ``signature`` covers the peer transcript (:func:`qpq_proto.peer_transcript`)
    in the dialer's role; the listening peer answers with its own proof.
    """

    identity_key: bytes
    nonce: bytes
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _key("identity_key", self.identity_key)
        _exact("nonce", self.nonce, NONCE_BYTES)
        _exact("signature", self.signature, SIGNATURE_BYTES)


@dataclass(frozen=True, slots=True)
class PeerDeliver:
    """One MLS application message (PrivateMessage), handed directly to a member.

    Answered ``Done`` only once the receiving peer's host persisted it.
    """

    payload: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _nonempty("payload", self.payload)


Call = (
    Health
    | Challenge
    | Authenticate
    | RegisterUser
    | ResolveUser
    | ResolveIdentity
    | UploadKeyPackages
    | UploadLastResort
    | FetchKeyPackage
    | CountKeyPackages
    | Publish
    | Fetch
    | FetchWait
    | Ack
    | Subscribe
    | SubscribeWithAcks
    | PublishEndpoints
    | ResolveEndpoints
    | DeleteAccount
    | CreateGroup
    | FetchGroupInfo
    | ReplaceGroupInfo
    | PeerChallenge
    | PeerAuthenticate
    | PeerDeliver
    | ResolveIdentities
    | RegisterDevice
    | ListDevices
    | RevokeDevice
    | PostLink
    | FetchLink
)


@dataclass(frozen=True, slots=True)
class Request:
    """One call with its protocol version and access token.

    The token never appears in ``repr``.
    """

    call: Call
    token: str = field(default="", repr=False)
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _uint("version", self.version, _U16)
        if not isinstance(self.token, str):
            raise InvalidArgumentError("token must be text", field="token")


# ---- results --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Done:
    """Success without a result."""


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """Answer to Health."""

    status: str
    version: str
    uptime_seconds: int
    storage: str

    def __post_init__(self) -> None:
        _uint("uptime_seconds", self.uptime_seconds, _U64)


@dataclass(frozen=True, slots=True)
class ChallengeNonce:
    """Answer to Challenge (and to PeerChallenge, between peers).

    A server also announces its limits here, to the client about to
    authenticate: the largest publish payload, the largest framed message,
    and how long an unacknowledged message stays queued. 0 means not
    announced (a peer, or a server from before they were): assume
    :data:`qpq_proto.DEFAULT_LIMITS`.
    """

    nonce: bytes
    max_payload_bytes: int = 0
    max_message_bytes: int = 0
    message_ttl_seconds: int = 0
    #: The server serves :class:`SubscribeWithAcks` (False: it may not know it).
    stream_acks: bool = False

    def __post_init__(self) -> None:
        _exact("nonce", self.nonce, NONCE_BYTES)
        _uint("max_payload_bytes", self.max_payload_bytes, _U64)
        _uint("max_message_bytes", self.max_message_bytes, _U64)
        _uint("message_ttl_seconds", self.message_ttl_seconds, _U64)


@dataclass(frozen=True, slots=True)
class UserKey:
    """Answer to ResolveUser."""

    identity_key: bytes

    def __post_init__(self) -> None:
        _key("identity_key", self.identity_key)


@dataclass(frozen=True, slots=True)
class Username:
    """Answer to ResolveIdentity."""

    username: str

    def __post_init__(self) -> None:
        check_username(self.username)


@dataclass(frozen=True, slots=True)
class Usernames:
    """Answer to ResolveIdentities: one username per key asked for, in order;
    an empty string for a key with no username.

    ``statuses``: the account status of each key, in the same order (empty
    from a server that does not say; a suspended account keeps its name, a
    deleted one has none).
    """

    usernames: tuple[str, ...]
    statuses: tuple[AccountStatus, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.usernames, tuple):
            raise InvalidArgumentError("usernames must be a tuple", field="usernames")
        for username in self.usernames:
            if username:
                check_username(username)
        if not isinstance(self.statuses, tuple) or not all(
            isinstance(s, AccountStatus) for s in self.statuses
        ):
            raise InvalidArgumentError("statuses must be AccountStatus values", field="statuses")
        if self.statuses and len(self.statuses) != len(self.usernames):
            raise InvalidArgumentError(
                "statuses must be one per username, or none", field="statuses"
            )


@dataclass(frozen=True, slots=True)
class Fingerprints:
    """Answer to UploadKeyPackages: SHA-256 of each package, in upload order."""

    fingerprints: tuple[bytes, ...]

    def __post_init__(self) -> None:
        for fingerprint in self.fingerprints:
            _exact("fingerprints", fingerprint, FINGERPRINT_BYTES)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """Answer to UploadLastResort."""

    fingerprint: bytes

    def __post_init__(self) -> None:
        _exact("fingerprint", self.fingerprint, FINGERPRINT_BYTES)


@dataclass(frozen=True, slots=True)
class ClaimedKeyPackage:
    """Answer to FetchKeyPackage."""

    package: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _nonempty("package", self.package)


@dataclass(frozen=True, slots=True)
class SuiteKeyPackageCount:
    """The KeyPackages of one MLS ciphersuite, in a ``KeyPackageCount``."""

    ciphersuite: int
    count: int
    has_last_resort: bool
    last_resort_served: int = 0

    def __post_init__(self) -> None:
        _uint("ciphersuite", self.ciphersuite, _U16, minimum=1)
        _uint("count", self.count, _U32)
        _uint("last_resort_served", self.last_resort_served, _U32)


@dataclass(frozen=True, slots=True)
class KeyPackageCount:
    """Answer to CountKeyPackages.

    The top-level fields count the default suite (0x0001), as a server from
    before suites answered; ``suites`` has one entry per suite the identity
    has KeyPackages or a last resort of (empty from such a server).
    ``last_resort_served``: how many claims were answered with the
    last-resort package since it was uploaded (each one is a Welcome its
    owner can open with the same keys; 0 from a server that does not count).
    """

    count: int
    has_last_resort: bool
    last_resort_served: int = 0
    suites: tuple[SuiteKeyPackageCount, ...] = ()

    def __post_init__(self) -> None:
        _uint("count", self.count, _U32)
        _uint("last_resort_served", self.last_resort_served, _U32)
        if not isinstance(self.suites, tuple) or not all(
            isinstance(s, SuiteKeyPackageCount) for s in self.suites
        ):
            raise InvalidArgumentError(
                "suites must be a tuple of SuiteKeyPackageCount", field="suites"
            )
        seen = [s.ciphersuite for s in self.suites]
        if len(set(seen)) != len(seen):
            raise InvalidArgumentError("suites must name each ciphersuite once", field="suites")

    def for_suite(self, ciphersuite: int) -> SuiteKeyPackageCount:
        """The count of one suite (zero if absent; from a server before
        suites, the top-level fields for the default suite)."""
        for entry in self.suites:
            if entry.ciphersuite == ciphersuite:
                return entry
        if ciphersuite == DEFAULT_CIPHERSUITE and not self.suites:
            return SuiteKeyPackageCount(
                DEFAULT_CIPHERSUITE, self.count, self.has_last_resort, self.last_resort_served
            )
        return SuiteKeyPackageCount(ciphersuite, 0, False)


@dataclass(frozen=True, slots=True)
class Published:
    """Answer to Publish: how many queues the message reached, and the group's epoch after it."""

    recipients: int
    epoch: int = 0

    def __post_init__(self) -> None:
        _uint("recipients", self.recipients, _U32)
        _uint("epoch", self.epoch, _U64)


@dataclass(frozen=True, slots=True)
class GroupSnapshot:
    """Answer to FetchGroupInfo: what a member needs to rejoin by external commit."""

    group_id: bytes
    epoch: int
    group_info: bytes = field(repr=False)
    ratchet_tree: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _nonempty("group_id", self.group_id)
        _uint("epoch", self.epoch, _U64)
        _nonempty("group_info", self.group_info)


@dataclass(frozen=True, slots=True)
class Messages:
    """Answer to Fetch and FetchWait, in seq order."""

    messages: tuple[Envelope, ...]


@dataclass(frozen=True, slots=True)
class Acked:
    """Answer to Ack: how many messages were deleted.

    Also an event on a :class:`SubscribeWithAcks` stream, confirming an
    acknowledgement written on it: then ``up_to_seq`` is the seq it
    covered (0 where a server did not set it).
    """

    removed: int
    up_to_seq: int = 0

    def __post_init__(self) -> None:
        _uint("removed", self.removed, _U32)
        _uint("up_to_seq", self.up_to_seq, _U64)


@dataclass(frozen=True, slots=True)
class Subscribed:
    """Answer to Subscribe; Events follow on the same stream."""


@dataclass(frozen=True, slots=True)
class PeerEndpoints:
    """Answer to ResolveEndpoints."""

    endpoints: tuple[Endpoint, ...]
    observed: Endpoint | None


@dataclass(frozen=True, slots=True)
class PeerProof:
    """Answer to PeerAuthenticate: the listening peer proves its identity key in turn."""

    identity_key: bytes
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _key("identity_key", self.identity_key)
        _exact("signature", self.signature, SIGNATURE_BYTES)


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A coded failure (the wire form of a ServiceError)."""

    code: ErrorCode
    message: str
    field: str = ""
    #: For EPOCH_CONFLICT: see :class:`~qpq_proto.errors.EpochConflictError`.
    accepted_commit: bytes = b""
    epoch: int = 0

    def __post_init__(self) -> None:
        _uint("epoch", self.epoch, _U64)
        if self.accepted_commit:
            _exact("accepted_commit", self.accepted_commit, FINGERPRINT_BYTES)

    @classmethod
    def from_exception(cls, error: ServiceError) -> ErrorResponse:
        """The wire form of ``error``."""
        if isinstance(error, EpochConflictError):
            return cls(error.code, error.message, error.field, error.accepted_commit, error.epoch)
        return cls(code=error.code, message=error.message, field=error.field)

    def to_exception(self) -> ServiceError:
        """The exception this response stands for."""
        return service_error(
            self.code,
            self.message,
            self.field,
            accepted_commit=self.accepted_commit,
            epoch=self.epoch,
        )


@dataclass(frozen=True, slots=True)
class Devices:
    """Answer to ListDevices: each current device key, and its certificate
    (empty for the account key itself, the account's first device)."""

    device_keys: tuple[bytes, ...]
    certificates: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.device_keys, tuple) or not isinstance(self.certificates, tuple):
            raise InvalidArgumentError("device_keys and certificates must be tuples")
        if len(self.device_keys) != len(self.certificates):
            raise InvalidArgumentError("one certificate per device key", field="certificates")
        for key in self.device_keys:
            _key("device_keys", key)


@dataclass(frozen=True, slots=True)
class LinkPayload:
    """Answer to FetchLink: what the mailbox holds for the caller (empty: nothing yet)."""

    payload: bytes = field(repr=False)
    device_key: bytes = b""


Result = (
    Done
    | HealthStatus
    | ChallengeNonce
    | UserKey
    | Username
    | Fingerprints
    | Fingerprint
    | ClaimedKeyPackage
    | KeyPackageCount
    | Published
    | Messages
    | Acked
    | Subscribed
    | PeerEndpoints
    | GroupSnapshot
    | PeerProof
    | Usernames
    | Devices
    | LinkPayload
)
Response = Result | ErrorResponse

#: A subscribe stream carries Envelopes and, at most once and last, an
#: ErrorResponse; a SubscribeWithAcks stream also Acked confirmations.
Event = Envelope | ErrorResponse | Acked

#: Which result a successful call answers with.
RESULT_OF: dict[type[Call], type[Result]] = {
    Health: HealthStatus,
    Challenge: ChallengeNonce,
    Authenticate: Done,
    RegisterUser: Done,
    ResolveUser: UserKey,
    ResolveIdentity: Username,
    UploadKeyPackages: Fingerprints,
    UploadLastResort: Fingerprint,
    FetchKeyPackage: ClaimedKeyPackage,
    CountKeyPackages: KeyPackageCount,
    Publish: Published,
    Fetch: Messages,
    FetchWait: Messages,
    Ack: Acked,
    Subscribe: Subscribed,
    SubscribeWithAcks: Subscribed,
    PublishEndpoints: Done,
    ResolveEndpoints: PeerEndpoints,
    DeleteAccount: Done,
    CreateGroup: Done,
    FetchGroupInfo: GroupSnapshot,
    ReplaceGroupInfo: Done,
    PeerChallenge: ChallengeNonce,
    PeerAuthenticate: PeerProof,
    PeerDeliver: Done,
    ResolveIdentities: Usernames,
    RegisterDevice: Done,
    ListDevices: Devices,
    RevokeDevice: Done,
    PostLink: Done,
    FetchLink: LinkPayload,
}


class Access(enum.Enum):
    """What a call must carry before the server runs it (see :data:`ACCESS`)."""

    #: Nothing: anyone may ask (only Health, for load balancers and probes).
    PUBLIC = "public"
    #: The server's shared access token.
    TOKEN = "token"  # noqa: S105 - the name of a requirement, not a secret
    #: The token, and an identity proven on this connection (Challenge, then
    #: Authenticate); the call acts only for that identity.
    IDENTITY = "identity"
    #: Only between peers (ALPN ``qpq-p2p/1``): a server answers it
    #: unsupportedCall. It carries no token; a listening peer answers it
    #: after the mutual identity proof (PeerChallenge, then PeerAuthenticate).
    PEER = "peer"


#: What each call needs. The server enforces it (and refuses every PEER call);
#: a client can refuse early.
ACCESS: dict[type[Call], Access] = {
    Health: Access.PUBLIC,
    Challenge: Access.TOKEN,
    Authenticate: Access.TOKEN,
    RegisterUser: Access.IDENTITY,
    ResolveUser: Access.TOKEN,
    ResolveIdentity: Access.TOKEN,
    UploadKeyPackages: Access.IDENTITY,
    UploadLastResort: Access.IDENTITY,
    # Claims consume someone else's single-use packages: the claimer must be a
    # proven identity, so draining is attributable and rate-limited per identity.
    FetchKeyPackage: Access.IDENTITY,
    CountKeyPackages: Access.IDENTITY,
    Publish: Access.IDENTITY,
    Fetch: Access.IDENTITY,
    FetchWait: Access.IDENTITY,
    Ack: Access.IDENTITY,
    Subscribe: Access.IDENTITY,
    SubscribeWithAcks: Access.IDENTITY,
    PublishEndpoints: Access.IDENTITY,
    ResolveEndpoints: Access.TOKEN,
    DeleteAccount: Access.IDENTITY,
    CreateGroup: Access.IDENTITY,
    FetchGroupInfo: Access.IDENTITY,
    ReplaceGroupInfo: Access.IDENTITY,
    PeerChallenge: Access.PEER,
    PeerAuthenticate: Access.PEER,
    PeerDeliver: Access.PEER,
    ResolveIdentities: Access.TOKEN,
    # A device registers itself: its key is proven, its account not yet known.
    RegisterDevice: Access.IDENTITY,
    ListDevices: Access.IDENTITY,
    RevokeDevice: Access.IDENTITY,
    # A new device posts its request with a proven key and no account yet.
    PostLink: Access.IDENTITY,
    FetchLink: Access.IDENTITY,
}
