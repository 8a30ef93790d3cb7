# Hand-written stub of the Rust extension qpq_core._mls (rust/python/),
# checked against the compiled module by `tox -e stubtest`. Its classes are
# re-exported by qpq_core; the docstrings are the public API's.
from collections.abc import Iterable
from typing import final

from qpq_core._framing import MlsMessageKind
from qpq_core._suites import Suite

__all__ = [
    "CIPHERSUITE",
    "CIPHERSUITE_ID",
    "DEFAULT_KEY_PACKAGE_LIFETIME_SECONDS",
    "MAX_KEY_PACKAGE_LIFETIME_SECONDS",
    "MAX_PAST_EPOCHS",
    "SUITE_IDS",
    "ApplicationMessage",
    "Cleared",
    "CommitApplied",
    "CommitBundle",
    "CommitVerified",
    "DeliveryGroup",
    "DeviceCertificate",
    "Encrypted",
    "GroupCreated",
    "GroupInfoFacts",
    "GroupRegistered",
    "Identity",
    "Joined",
    "KeyPackageInfo",
    "KeyPackagesCreated",
    "MessageInfo",
    "MlsClient",
    "OwnMessage",
    "ProposalCreated",
    "ProposalStored",
    "ProposalVerified",
    "__version__",
    "group_info_facts",
    "peek_message",
    "validate_key_package",
    "verify_signature",
]

CIPHERSUITE: str
CIPHERSUITE_ID: int
SUITE_IDS: tuple[int, ...]
DEFAULT_KEY_PACKAGE_LIFETIME_SECONDS: int
MAX_KEY_PACKAGE_LIFETIME_SECONDS: int
MAX_PAST_EPOCHS: int
__version__: str

# Storage key -> new value, or None to delete (qpq_core.ChangeSet).
_Changes = tuple[tuple[bytes, bytes | None], ...]

@final
class Identity:
    """An Ed25519 identity; the public key is the (device) identity key.

    Its leaves' credential is the key itself (legacy: its own account) or
    the device certificate it carries.
    """

    @classmethod
    def generate(cls) -> Identity: ...
    @classmethod
    def from_secret_bytes(cls, secret: bytes, certificate: bytes | None = None) -> Identity: ...
    def with_certificate(self, certificate: bytes) -> Identity:
        """The same key carrying ``certificate`` (it must verify and name this key)."""
    @property
    def certificate(self) -> bytes | None:
        """The device certificate this identity's leaves carry, or ``None``."""
    @property
    def account_key(self) -> bytes:
        """The certificate's account key, or the public key when none."""
    def issue_device_certificate(self, device_key: bytes, name: str, issued_at: int) -> bytes:
        """Sign a device certificate for ``device_key`` with this (account) key."""
    def secret_bytes(self) -> bytes: ...
    @property
    def public_key(self) -> bytes: ...
    def sign(self, message: bytes) -> bytes: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class DeviceCertificate:
    """A verified device certificate: ``account_key`` vouches for ``device_key``."""

    @classmethod
    def verify(cls, data: bytes) -> DeviceCertificate:
        """Decode and verify; raise ``InvalidIdentityError`` or ``InvalidSignatureError``."""
    @property
    def device_key(self) -> bytes: ...
    @property
    def account_key(self) -> bytes: ...
    @property
    def name(self) -> str: ...
    @property
    def issued_at(self) -> int: ...

def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Verify an Ed25519 signature; raise ``InvalidSignatureError`` if it is bad."""

@final
class KeyPackageInfo:
    """What the directory learns from a valid KeyPackage."""

    @property
    def identity_key(self) -> bytes:
        """The 32-byte identity (device) key (== the leaf signature key)."""
    @property
    def account_key(self) -> bytes:
        """The account key its credential names (the identity key if legacy)."""
    @property
    def ciphersuite(self) -> int:
        """The MLS ciphersuite id: one of ``qpq_core.Suite``'s values."""
    @property
    def not_after(self) -> int:
        """End of the KeyPackage's lifetime, unix seconds."""
    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the uploaded bytes (the dedup key)."""
    @property
    def last_resort(self) -> bool:
        """Carries the last-resort extension (never consumed)."""

def validate_key_package(
    data: bytes, *, now: int | None = None, max_lifetime_seconds: int = ...
) -> KeyPackageInfo:
    """Validate a TLS-serialized ``MLSMessage(mls_key_package)``.

    Checks both signatures, that the lifetime holds at ``now`` (and at the
    system clock, which OpenMLS checks) with a range of at most
    ``max_lifetime_seconds`` (default ``DEFAULT_MAX_LIFETIME_SECONDS``), the
    ciphersuite allowlist, and that the BasicCredential identity is 32 bytes
    and equals the signature key.

    Raises:
        MalformedMlsMessageError: not a KeyPackage MLSMessage, or too large.
        InvalidKeyPackageError: a check failed (qpq_proto's class).
        UnsupportedCiphersuiteError: another ciphersuite (qpq_proto's class).
    """

@final
class MessageInfo:
    """The cleartext facts of an MLSMessage; equal when the facts are."""

    @property
    def kind(self) -> MlsMessageKind:
        """The content type of a group message, or the message type outside groups."""
    @property
    def group_id(self) -> bytes | None:
        """The group; ``None`` for Welcome and KeyPackage."""
    @property
    def epoch(self) -> int | None:
        """The epoch the message is for; ``None`` likewise."""
    @property
    def wire_format(self) -> str | None:
        """``"public"`` (PublicMessage) or ``"private"`` (PrivateMessage) for
        group messages; ``None`` for Welcome, KeyPackage and GroupInfo.
        Handshakes travel as PublicMessage, application messages as
        PrivateMessage: the delivery service refuses anything else before
        any cryptography."""
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

def peek_message(data: bytes) -> MessageInfo:
    """Read wire format, group id, epoch and content type without any group state.

    PublicMessage and PrivateMessage headers carry them in cleartext
    (RFC 9420 §6.2, §6.3).

    Raises:
        MalformedMlsMessageError: the bytes are no MLSMessage, or too large.
    """

@final
class GroupInfoFacts:
    """What a GroupInfo says about the epoch it describes.

    Two GroupInfos have equal ``digest`` exactly when they describe the same
    epoch of the same group (group context: tree hash, confirmed transcript
    hash, extensions) with the same ``external_pub``, whoever signed them.
    """

    @property
    def group_id(self) -> bytes: ...
    @property
    def epoch(self) -> int: ...
    @property
    def context_hash(self) -> bytes:
        """SHA-256 of the TLS-serialized GroupContext."""
    @property
    def external_pub(self) -> bytes:
        """The HPKE key a joiner encrypts an external commit to."""
    @property
    def digest(self) -> bytes:
        """SHA-256 over a label, ``context_hash`` and ``external_pub``."""

def group_info_facts(data: bytes) -> GroupInfoFacts:
    """The facts of an ``MLSMessage(GroupInfo)`` (its signature is not checked).

    Raises:
        MalformedMlsMessageError: not a GroupInfo message, or too large.
        InvalidMlsMessageError: it lacks the external_pub extension.
        UnsupportedCiphersuiteError: another ciphersuite.
    """

# Results of MlsClient operations. ``changes`` and the message bytes hold
# secrets or ciphertext and never appear in a repr.

@final
class KeyPackagesCreated:
    """New KeyPackages (MLSMessage-wrapped), ready to upload."""

    @property
    def packages(self) -> tuple[bytes, ...]: ...
    @property
    def changes(self) -> _Changes:
        """Rows to persist: one private bundle per package."""

@final
class GroupCreated:
    """A new group with this client as its only member, at epoch 0."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def group_info(self) -> bytes:
        """MLSMessage(GroupInfo) of epoch 0 with the ratchet tree, signed by us:
        what the delivery service registers the group from."""
    @property
    def changes(self) -> _Changes: ...

@final
class CommitBundle:
    """A commit of ours, pending until the delivery service accepts it."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def commit(self) -> bytes:
        """The commit to publish to the group (a PublicMessage)."""
    @property
    def welcome(self) -> bytes | None:
        """For added members, sent only after the merge; else ``None``."""
    @property
    def group_info(self) -> bytes:
        """MLSMessage(GroupInfo) of the epoch the commit creates, signed by us,
        with the ratchet tree: the delivery service checks and serves it."""
    @property
    def epoch(self) -> int:
        """The epoch the commit is for (the current one)."""
    @property
    def changes(self) -> _Changes:
        """Rows to persist, including the pending commit."""

@final
class ProposalCreated:
    """A proposal of ours (leaving) that another member must commit."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def proposal(self) -> bytes: ...
    @property
    def changes(self) -> _Changes: ...

@final
class CommitApplied:
    """A commit was merged: ours (after the DS accepted it) or a peer's."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def epoch(self) -> int:
        """The new epoch."""
    @property
    def committer(self) -> bytes:
        """Identity key of who committed (ours for our own merge)."""
    @property
    def external(self) -> bool:
        """An external commit: a member resynchronized, or a new device of a
        member account joined and is in ``added`` (for our own merge, the one
        ``rejoin`` made)."""
    @property
    def added(self) -> tuple[bytes, ...]:
        """Identity keys that joined."""
    @property
    def removed(self) -> tuple[bytes, ...]:
        """Identity keys that were removed."""
    @property
    def left(self) -> tuple[bytes, ...]:
        """Those of ``removed`` whose removal was their own proposal (they left)."""
    @property
    def self_removed(self) -> bool:
        """This client was removed; its group state is deleted."""
    @property
    def changes(self) -> _Changes: ...

@final
class Cleared:
    """Our pending commit was dropped (the DS rejected it)."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def changes(self) -> _Changes: ...

@final
class Joined:
    """This client joined a group from a Welcome."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def epoch(self) -> int: ...
    @property
    def members(self) -> tuple[bytes, ...]:
        """Identity keys of every member, in leaf order."""
    @property
    def inviter(self) -> bytes:
        """Identity key of the member who signed the Welcome's GroupInfo
        (RFC 9420 §12.4.3.1): who invited us, proven by MLS, whoever
        delivered the Welcome."""
    @property
    def last_resort(self) -> bool:
        """The Welcome used our last-resort KeyPackage; the join deleted its
        keys (a replayed Welcome cannot join again): upload a new one."""
    @property
    def facts(self) -> GroupInfoFacts:
        """The joined epoch as a GroupInfo describes it, to compare with what
        the delivery service serves for the group."""
    @property
    def changes(self) -> _Changes: ...

@final
class Encrypted:
    """An application message. Persist ``changes`` before sending it: a
    resent ratchet generation would reuse a key and nonce."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def message(self) -> bytes: ...
    @property
    def changes(self) -> _Changes: ...

@final
class ApplicationMessage:
    """A decrypted application message from ``sender`` (identity key)."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def epoch(self) -> int: ...
    @property
    def sender(self) -> bytes: ...
    @property
    def plaintext(self) -> bytes: ...
    @property
    def changes(self) -> _Changes: ...

@final
class ProposalStored:
    """A member's leave proposal was validated and stored; commit it with
    :meth:`MlsClient.commit_pending_proposals`."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def epoch(self) -> int: ...
    @property
    def sender(self) -> bytes: ...
    @property
    def changes(self) -> _Changes: ...

@final
class OwnMessage:
    """Our own message echoed back by the delivery service; nothing to do."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def changes(self) -> _Changes: ...

@final
class MlsClient:
    """One user's MLS groups, backed by rows the host persists.

    Every mutating call returns a frozen result whose ``changes`` the host
    persists in one transaction. On any error the in-memory state is rolled
    back, an exception is raised, and nothing needs persisting. Calls on one
    client are serialized; crypto runs without the GIL.

    Args:
        identity: this user's identity (its key signs everything).
        stored: every (key, value) row persisted so far, i.e. all change sets
            applied in order.
    """

    def __new__(
        cls, identity: Identity, stored: Iterable[tuple[bytes, bytes]] = ()
    ) -> MlsClient: ...
    @property
    def identity(self) -> Identity: ...
    def reload(self, stored: Iterable[tuple[bytes, bytes]]) -> None:
        """Drop every cache and repopulate from the persisted rows (as at startup)."""
    def create_key_packages(
        self,
        count: int,
        *,
        lifetime_seconds: int = ...,
        last_resort: bool = False,
        suite: int = ...,
    ) -> KeyPackagesCreated:
        """Create ``count`` KeyPackages of ``suite`` (a ``Suite``, default
        ``Suite.DEFAULT``), valid ``lifetime_seconds`` (default
        ``DEFAULT_KEY_PACKAGE_LIFETIME_SECONDS``). A group accepts only
        KeyPackages of its own suite."""
    def create_group(self, group_id: bytes | None = None, *, suite: int = ...) -> GroupCreated:
        """Create a group of ``suite`` (a ``Suite``, default ``Suite.DEFAULT``;
        a random 16-byte id unless given) at epoch 0. Its suite never changes."""
    def add_members(self, group_id: bytes, key_packages: Iterable[bytes]) -> CommitBundle:
        """Commit adding the owners of ``key_packages``; leaves a pending commit."""
    def remove_members(self, group_id: bytes, identity_keys: Iterable[bytes]) -> CommitBundle:
        """Commit removing members by identity key; leaves a pending commit."""
    def self_update(self, group_id: bytes) -> CommitBundle:
        """Commit a fresh leaf key (post-compromise security)."""
    def commit_pending_proposals(self, group_id: bytes) -> CommitBundle:
        """Commit the stored proposals (e.g. a member's leave)."""
    def leave(self, group_id: bytes) -> ProposalCreated:
        """Propose our own removal; another member commits it."""
    def merge_pending_commit(self, group_id: bytes) -> CommitApplied:
        """Apply our pending commit once the delivery service accepted it."""
    def clear_pending_commit(self, group_id: bytes) -> Cleared:
        """Drop our pending commit after the delivery service rejected it."""
    def export_group_info(self, group_id: bytes) -> bytes:
        """The current epoch's GroupInfo (with the ratchet tree), signed by us."""
    def group_info_facts(self, group_id: bytes) -> GroupInfoFacts:
        """The facts of the group's current epoch as our own state derives
        them: the GroupInfo the delivery service serves for this epoch must
        have the same ``digest``."""
    def rejoin(self, group_id: bytes, group_info: bytes, ratchet_tree: bytes) -> CommitBundle:
        """Resynchronize a group we fell behind in, by external commit; or, as a
        new device of an account that has a leaf in the group (a restored
        backup), join it by itself (``NotAMemberError`` if neither).

        ``group_info`` and ``ratchet_tree`` are what the delivery service serves
        (the tree may be empty when the GroupInfo carries it). Our old state of
        the group is deleted and a new one built whose commit is pending: merge
        or clear it once the delivery service answered. Until then the group
        neither sends nor processes (``CommitConflictError``).
        """
    def join_from_welcome(self, welcome: bytes) -> Joined:
        """Join from a Welcome; every member's identity must equal its signature key."""
    def encrypt(self, group_id: bytes, plaintext: bytes) -> Encrypted:
        """Encrypt an application message for the group."""
    def process(
        self, message: bytes
    ) -> ApplicationMessage | CommitApplied | ProposalStored | OwnMessage:
        """Process any incoming group message; a commit is validated and merged.

        Raises:
            WrongGroupError, WrongEpochError, ReplayedMessageError,
            DecryptionError, MalformedMlsMessageError, ...: state unchanged.
        """
    def group_ids(self) -> tuple[bytes, ...]:
        """Ids of the groups held in this state."""
    def members(self, group_id: bytes) -> tuple[bytes, ...]:
        """Identity keys of the group's members, in leaf order."""
    def member_credentials(self, group_id: bytes) -> tuple[bytes, ...]:
        """Each member's credential identity, in the leaf order of ``members``:
        its 32-byte key (legacy) or its device certificate."""
    def member_accounts(self, group_id: bytes) -> tuple[bytes, ...]:
        """Account keys of the members, in the leaf order of ``members``."""
    def epoch(self, group_id: bytes) -> int:
        """The group's current epoch."""
    def group_suite(self, group_id: bytes) -> Suite:
        """The group's ciphersuite, fixed when it was created."""
    def has_pending_proposals(self, group_id: bytes) -> bool:
        """True when proposals wait to be committed (sending is blocked)."""
    def has_pending_commit(self, group_id: bytes) -> bool:
        """True when a commit of ours waits for merge or clear."""
    def export_secret(self, group_id: bytes, label: str, context: bytes, length: int) -> bytes:
        """The MLS exporter (RFC 9420 §8.5); equal across the members of an epoch."""

# The delivery service's side. ``changes`` never appears in a repr.

@final
class GroupRegistered:
    """A group the delivery service registered."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def epoch(self) -> int: ...
    @property
    def members(self) -> tuple[bytes, ...]:
        """Identity keys of the members, in leaf order."""
    @property
    def signer(self) -> bytes:
        """Identity key of the member who signed the GroupInfo."""
    @property
    def changes(self) -> _Changes: ...

@final
class ProposalVerified:
    """A member's proposal (leaving), verified and stored for the commit that
    will cover it."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def epoch(self) -> int: ...
    @property
    def sender(self) -> bytes: ...
    @property
    def changes(self) -> _Changes: ...

@final
class CommitVerified:
    """A commit verified and merged: the group is at the new epoch."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def epoch(self) -> int:
        """The epoch the commit created."""
    @property
    def committer(self) -> bytes: ...
    @property
    def external(self) -> bool:
        """An external commit (a member resynchronized, or a new device of a
        member account joined: then it is in ``added``, with no Welcome)."""
    @property
    def added(self) -> tuple[bytes, ...]: ...
    @property
    def removed(self) -> tuple[bytes, ...]: ...
    @property
    def left(self) -> tuple[bytes, ...]:
        """Those of ``removed`` whose removal was their own proposal."""
    @property
    def members(self) -> tuple[bytes, ...]:
        """The roster after the commit, in leaf order: the fan-out."""
    @property
    def group_info_facts(self) -> GroupInfoFacts:
        """The facts of the GroupInfo that came with the commit (members
        compare its digest with their own)."""
    @property
    def changes(self) -> _Changes: ...

@final
class DeliveryGroup:
    """One group's public state on the delivery service (RFC 9750 §5).

    Every handshake message is verified against it: signed by a current
    member, for this epoch, allowed by qpq's policy, a commit only with the
    GroupInfo of the epoch it creates. Each call returns the rows it changed;
    on any error the state is as before. Calls are serialized and run
    without the GIL.
    """

    @staticmethod
    def create(group_info: bytes) -> tuple[DeliveryGroup, GroupRegistered]:
        """Register a group from its creator's MLSMessage(GroupInfo), which
        must carry the ratchet tree."""
    @staticmethod
    def load(group_id: bytes, stored: Iterable[tuple[bytes, bytes]]) -> DeliveryGroup:
        """Restore from every (key, value) row stored for this group."""
    @property
    def group_id(self) -> bytes: ...
    def epoch(self) -> int: ...
    def suite(self) -> Suite:
        """The group's ciphersuite: a commit may add only KeyPackages of it."""
    def members(self) -> tuple[bytes, ...]:
        """Identity keys of the members, in leaf order."""
    def ratchet_tree(self) -> bytes:
        """The current epoch's ratchet tree, TLS-serialized (for ``rejoin``)."""
    def check_group_info(self, group_info: bytes, uploader: bytes) -> GroupInfoFacts:
        """Check a GroupInfo a member (``uploader``) offers in place of the
        served one: current epoch, signed by the uploader's own leaf, exactly
        the current group context and confirmation tag, only the
        ``external_pub`` and ``ratchet_tree`` extensions. State unchanged.

        Raises:
            WrongEpochError: not the current epoch.
            InvalidSignatureError: not signed by the uploader's leaf.
            InvalidMlsMessageError, MalformedMlsMessageError,
            WrongGroupError: anything else.
        """
    def verify(
        self, message: bytes, group_info: bytes | None = None
    ) -> ProposalVerified | CommitVerified:
        """Verify a handshake message (a PublicMessage) and apply it.

        Raises:
            InvalidMlsMessageError, WrongGroupError, WrongEpochError,
            InvalidSignatureError, NotAMemberError, ...: state unchanged.
        """
