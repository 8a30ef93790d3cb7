"""qpq-core: identity and MLS (RFC 9420) for qpq, through our own PyO3
binding of OpenMLS.

Everything is bytes in, bytes out, in the standard RFC 9420 wire formats
(TLS-serialized MLSMessage), in one of two ciphersuites chosen per group
(:class:`Suite`): ``MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`` (0x0001,
the default) or the post-quantum ``MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519``
(0x004D)::

    alice = MlsClient(Identity.generate())
    group = alice.create_group()
    ds, _ = DeliveryGroup.create(group.group_info)    # on the server
    bundle = alice.add_members(group.group_id, [bob_key_package])
    ds.verify(bundle.commit, bundle.group_info)      # the server accepts it
    alice.merge_pending_commit(group.group_id)
    bob.join_from_welcome(bundle.welcome)
    bob.process(alice.encrypt(group.group_id, b"hi").message).plaintext

Every mutating call returns a frozen result with ``changes`` to persist
atomically; on any error the state is unchanged and a :class:`MlsError`
subclass (or, for a refused KeyPackage or ciphersuite, qpq_proto's
``InvalidKeyPackageError`` or ``UnsupportedCiphersuiteError``) is raised.
How the binding works: docs/mls.md.
"""

from __future__ import annotations

from qpq_core import _mls
from qpq_core._changes import ChangeSet, apply_changes
from qpq_core._framing import MlsMessageKind
from qpq_core._limits import MAX_KEY_PACKAGE_BYTES, MAX_MESSAGE_BYTES

# The Rust extension's classes are the public ones, as in pyca/cryptography:
# results are frozen and typed, and isinstance() works against these names.
from qpq_core._mls import (
    ApplicationMessage,
    Cleared,
    CommitApplied,
    CommitBundle,
    CommitVerified,
    DeliveryGroup,
    DeviceCertificate,
    Encrypted,
    GroupCreated,
    GroupInfoFacts,
    GroupRegistered,
    Identity,
    Joined,
    KeyPackageInfo,
    KeyPackagesCreated,
    MessageInfo,
    MlsClient,
    OwnMessage,
    ProposalCreated,
    ProposalStored,
    ProposalVerified,
    group_info_facts,
    peek_message,
    validate_key_package,
    verify_signature,
)
from qpq_core._suites import Suite
from qpq_core.errors import (
    CommitConflictError,
    DecryptionError,
    InternalMlsError,
    InvalidIdentityError,
    InvalidKeyPackageError,
    InvalidMlsArgumentError,
    InvalidMlsMessageError,
    InvalidSignatureError,
    MalformedMlsMessageError,
    MlsError,
    NoPendingCommitError,
    NotAMemberError,
    PendingProposalsError,
    ReplayedMessageError,
    StateCorruptError,
    UnsupportedCiphersuiteError,
    WrongEpochError,
    WrongGroupError,
)

#: The default ciphersuite (RFC 9420 §17.1, value 0x0001); see :class:`Suite`.
CIPHERSUITE: str = _mls.CIPHERSUITE
#: Its numeric id.
CIPHERSUITE_ID: int = _mls.CIPHERSUITE_ID
#: Every ciphersuite the binding speaks, the default first.
SUITES: tuple[Suite, ...] = tuple(Suite(i) for i in _mls.SUITE_IDS)
#: Past epochs whose application messages still decrypt after a commit.
MAX_PAST_EPOCHS: int = _mls.MAX_PAST_EPOCHS
#: KeyPackage lifetime when none is given: 28 days, a third of the longest
#: lifetime a validator accepts.
DEFAULT_KEY_PACKAGE_LIFETIME_SECONDS: int = _mls.DEFAULT_KEY_PACKAGE_LIFETIME_SECONDS
#: Longest KeyPackage lifetime range ``validate_key_package`` accepts: 84 days
#: plus the one hour of clock-skew margin OpenMLS puts before ``not_before``
#: (RFC 9420 §10 leaves the policy to the application).
DEFAULT_MAX_LIFETIME_SECONDS: int = _mls.MAX_KEY_PACKAGE_LIFETIME_SECONDS

__version__: str = _mls.__version__

__all__ = [
    "CIPHERSUITE",
    "CIPHERSUITE_ID",
    "DEFAULT_KEY_PACKAGE_LIFETIME_SECONDS",
    "DEFAULT_MAX_LIFETIME_SECONDS",
    "MAX_KEY_PACKAGE_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_PAST_EPOCHS",
    "SUITES",
    "ApplicationMessage",
    "ChangeSet",
    "Cleared",
    "CommitApplied",
    "CommitBundle",
    "CommitConflictError",
    "CommitVerified",
    "DecryptionError",
    "DeliveryGroup",
    "DeviceCertificate",
    "Encrypted",
    "GroupCreated",
    "GroupInfoFacts",
    "GroupRegistered",
    "Identity",
    "InternalMlsError",
    "InvalidIdentityError",
    "InvalidKeyPackageError",
    "InvalidMlsArgumentError",
    "InvalidMlsMessageError",
    "InvalidSignatureError",
    "Joined",
    "KeyPackageInfo",
    "KeyPackagesCreated",
    "MalformedMlsMessageError",
    "MessageInfo",
    "MlsClient",
    "MlsError",
    "MlsMessageKind",
    "NoPendingCommitError",
    "NotAMemberError",
    "OwnMessage",
    "PendingProposalsError",
    "ProposalCreated",
    "ProposalStored",
    "ProposalVerified",
    "ReplayedMessageError",
    "StateCorruptError",
    "Suite",
    "UnsupportedCiphersuiteError",
    "WrongEpochError",
    "WrongGroupError",
    "__version__",
    "apply_changes",
    "group_info_facts",
    "peek_message",
    "validate_key_package",
    "verify_signature",
]
